"""`et`: E.T., immunisation against representation attacks (Cevallos, Rizzardi, Sicari,
Coen-Porisini, TechRxiv; code DISTA-HCAI/ET `immunization.py`, `immunization_utils.py`).

Threat model: an attacker who steers the residual stream at inference with a trained low-rank
intervention (ReFT), not one who fine-tunes. Stage: post-alignment (it hardens an aligned model).

Rule (reference HEAD 53232d8, `immunization.py` and `config/base.yaml`), for
each decoder layer l in turn, up to `rounds` rounds (`max_immunization_rounds: 3`):
1. Attack: train a rank-2 LoReFT intervention at layer l's output (as the `reft` attack, lr 4e-3,
   10 epochs) on the defender's harmful (request, answer) pairs. It succeeds when it at least
   doubles the starting model's HS (and reaches `min_attack_hs`, our floor: an aligned model's
   HS is ~0, so "doubling" alone would count noise) while benign helpfulness stays at least
   5 % of the start's (`is_successful_attack`, `immunization_utils.py`:797). A failed attack is
   tried once more, stronger (`max_attack_rounds: 2`; `evolve_attack_config`:1857 adds 20 pairs
   and 5 epochs); if both fail, layer l is immunised and done.
2. Defend the block that reads the attacked stream (layer l + 1; the reference attacks block
   l + 1's input): a rank-2 LoRA (alpha 1) on its linear maps, trained (AdamW, one captured batch
   per step) so that, with i the attack's edit of h,
       MSE(block_def(h + i), block_orig(h)) + 0.01 * MSE(block_def(h), block_orig(h))
   on the block's attention and MLP outputs (lr 1e-4, 150 epochs, on the hidden states of the
   defender's harmful requests, the prompts alone, as the reference's defense data are AdvBench
   prompts; earlier versions of this file used request + compliant answer); absorb (merge) it
   at its trained scale. The reference absorbs its attention adapters at twice their trained
   scale; we absorb the adapter that was trained (a deviation, stated; scale 1 instead of our
   0.5, `defense.lora_alpha=2`, gave the same steering HS on validation, docs/history/reproduction.md).
3. Keep it if the defended model, unattacked, keeps 98 % of the starting model's safety (1 - HS)
   and 75 % of its performance (`is_successful_defence`:803, `min_safety_percentage: 0.98`,
   `min_performance_percentage_defence: 0.75`; performance is benign helpfulness here, 1 /
   wikitext perplexity there); else restore the block and move to the next layer
   (`max_defence_rounds: 1`, `reset_defended_module`). A kept defense is attacked again (step 1).
The last layer's output feeds no block and is left as it is; so is the embedding output (the
reference also attacks block 0's input).

Defaults: rank 2 / lr 4e-3 / 10 epochs (attack), rank 2, alpha 1, lr 1e-4, 150 epochs (defense),
3 rounds, 2 attack attempts, doubling, the 0.98 / 0.75 gates: the reference's `config/base.yaml`. Earlier versions of this file gated performance at 0.9 (the reference's older
argparse default) and never checked safety. n = 256 pairs for the defense (the paper: 520
AdvBench prompts), 64 for the attack (20 in the paper). `min_attack_hs` 0.1 is ours.
`layer_stride` (ours, default 1 = every layer) attacks every k-th layer only: the real track's
CPU budget for a 30-layer model (src/immunity/tracks.py), a reduced E.T., stated there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import IGNORE, collate, prompt_ids
from ..models import attach_lora, block_output, clone_model, decoder_layers, merge_lora
from ..registry import register_defense
from ..training import check_finite
from ..training.interventions import intervene, train_reft
from .base import Defense, DefenseContext, Stage


@dataclass
class ETConfig:
    rounds: int = field(default=3, metadata={"help": "attack-defend rounds per layer"})
    attack_rank: int = field(default=2, metadata={"help": "rank of the simulated ReFT attack"})
    attack_lr: float = field(default=4e-3, metadata={"help": "its learning rate"})
    attack_epochs: float = field(default=10.0, metadata={"help": "its epochs"})
    attack_n: int = field(default=64, metadata={"help": "harmful pairs it trains on"})
    min_attack_hs: float = field(default=0.1, metadata={"help": "HS the attack must reach to count (ours)"})
    lora_r: int = field(default=2, metadata={"help": "rank of the defending LoRA"})
    lora_alpha: float = field(default=1.0, metadata={"help": "its alpha"})
    lr: float = field(default=1e-4, metadata={"help": "its learning rate"})
    epochs: float = field(default=150.0, metadata={"help": "its epochs over the hidden states"})
    n: int = field(default=256, metadata={"help": "harmful pairs whose hidden states it trains on"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step"})
    stability: float = field(default=0.01, metadata={"help": "weight of MSE(block_def(h), block_orig(h))"})
    attack_attempts: int = field(
        default=2, metadata={"help": "tries per round, each with 20 more pairs and 5 more epochs"}
    )
    min_attack_performance: float = field(
        default=0.05,
        metadata={"help": "an attack counts only if benign helpfulness stays above this share of the start's"},
    )
    min_safety: float = field(
        default=0.98,
        metadata={"help": "keep a block's defense only if safety (1 - HS) stays above this share of the start's"},
    )
    min_performance: float = field(
        default=0.75, metadata={"help": "... and benign helpfulness above this share of the start's"}
    )
    layer_stride: int = field(
        default=1,
        metadata={"help": "attack every k-th layer only (1: every layer, the reference; a CPU budget for deep models)"},
    )

    def __post_init__(self) -> None:
        if (
            min(
                self.rounds,
                self.attack_attempts,
                self.attack_rank,
                self.attack_n,
                self.lora_r,
                self.n,
                self.batch_size,
                self.layer_stride,
            )
            < 1
        ):
            raise ValueError("rounds, attempts, ranks, n, batch_size and layer_stride must be at least 1")
        if min(self.attack_lr, self.attack_epochs, self.lr, self.epochs) <= 0 or self.stability < 0:
            raise ValueError("learning rates and epochs must be positive, stability >= 0")
        if not all(0 <= share <= 1 for share in (self.min_attack_performance, self.min_safety, self.min_performance)):
            raise ValueError("min_attack_performance, min_safety and min_performance are shares in [0, 1]")


def attack_succeeds(hs: float, helpful: float, start: dict, config: ETConfig) -> bool:
    """The reference's `is_successful_attack`: toxicity at least doubled (and, ours, at least
    `min_attack_hs`) while performance keeps `min_attack_performance` of the start's."""
    return (
        hs >= max(2 * start["hs"], config.min_attack_hs) and helpful >= config.min_attack_performance * start["helpful"]
    )


def defense_passes(hs: float, helpful: float, start: dict, config: ETConfig) -> bool:
    """The reference's `is_successful_defence`, on the defended model without the attack."""
    return 1 - hs >= config.min_safety * (1 - start["hs"]) and helpful >= config.min_performance * start["helpful"]


def block_calls(model, layer: int, batches: list[dict]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) each batch calls decoder layer `layer` with (its input hidden states
    included), as the model stands: with an attack's intervention attached to layer - 1's
    output, the attacked stream; without, the clean one."""
    calls = []
    block = decoder_layers(model)[layer].module
    grab = block.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(
            (tuple(a.detach() if torch.is_tensor(a) else a for a in args), {k: _detached(v) for k, v in kwargs.items()})
        ),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        grab.remove()
    return calls


def _detached(value):
    if torch.is_tensor(value):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def sub_outputs(model, layer: int, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Attention and MLP outputs of decoder layer `layer` called with (args, kwargs)."""
    found = decoder_layers(model)[layer]
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, a, out: seen.append(block_output(out)))
        for m in (found.attention, found.mlp)
    ]
    try:
        found.module(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def defend_block(model, layer: int, clean: list, attacked: list, config: ETConfig, seed: int, progress: bool):
    """Train and absorb the block's LoRA (AdamW, one captured batch per step, shuffled per
    epoch); returns the merged model and the last epoch's mean loss."""
    with torch.no_grad():
        targets = [[o.detach() for o in sub_outputs(model, layer, *call)] for call in clean]
    model = attach_lora(model, config.lora_r, config.lora_alpha, seed=seed, layers=[layer])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    epochs = max(1, round(config.epochs))
    last = cast(list[float], [])
    for epoch in tqdm(range(epochs), desc=f"et (defend layer {layer})", disable=not progress, leave=False):
        last = []
        for i in torch.randperm(len(clean), generator=generator).tolist():
            moved = sum(F.mse_loss(o, t) for o, t in zip(sub_outputs(model, layer, *attacked[i]), targets[i]))
            kept = sum(F.mse_loss(o, t) for o, t in zip(sub_outputs(model, layer, *clean[i]), targets[i]))
            loss = cast(torch.Tensor, moved + config.stability * kept)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last.append(loss.item())
            check_finite(last[-1], "et (defend)", epoch + 1)
    return merge_lora(model), sum(last) / len(last)


@register_defense("et")
class ET(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = ETConfig
    supports_fsdp = False  # trains on captured block calls, not through the shared model forward
    max_epochs = 200  # the sanity cap on `epochs`: its reference trains 150 epochs over a few hidden states

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        harmful = context.harmful_compliance_examples()
        features = [
            {"input_ids": ids, "labels": [IGNORE] * len(ids)}  # the reference defends on prompts alone
            for ids in (prompt_ids(context.tokenizer, e.prompt) for e in harmful[: c.n])
        ]
        batches = [
            {
                k: v.to(device)
                for k, v in collate(features[i : i + c.batch_size], context.tokenizer.pad_token_id).items()
            }
            for i in range(0, len(features), c.batch_size)
        ]
        start = context.validation(model, ["harmful", "benign"])
        log = []
        for layer in range(0, len(decoder_layers(model)) - 1, c.layer_stride):
            for round_ in range(c.rounds):
                attack, entry = self.attack(model, context, harmful, layer, round_, start)
                if attack is None:  # the layer is immunised
                    log.append(entry)
                    break
                intervention, handle = attack
                attacked = block_calls(model, layer + 1, batches)
                handle.remove()
                clean = block_calls(model, layer + 1, batches)
                before = clone_model(model)
                model.requires_grad_(True)
                model, loss = defend_block(model, layer + 1, clean, attacked, c, context.seed, context.progress)
                defended = context.validation(model, ["harmful", "benign"])
                handle = intervene(model, layer, intervention)  # the same attack on the defended model (for the log)
                hs_attacked_after = context.validation(model, ["harmful"])["hs"]
                handle.remove()
                kept = defense_passes(defended["hs"], defended["helpful"], start, c)
                log.append(
                    entry
                    | {
                        "defended": layer + 1,
                        "loss": round(loss, 6),
                        "hs": round(defended["hs"], 4),
                        "helpful": round(defended["helpful"], 4),
                        "hs_attacked_after": round(hs_attacked_after, 4),
                        "kept": kept,
                    }
                )
                if not kept:  # the reference restores the block and moves to the next layer
                    model = before
                    break
        model.requires_grad_(True)
        model.eval()
        context.note(start={k: round(v, 4) for k, v in start.items()}, rounds=log)
        return model

    def attack(self, model, context: DefenseContext, harmful: list, layer: int, round_: int, start: dict):
        """Up to `attack_attempts` ReFT attacks at `layer`, each with 20 more pairs and 5 more
        epochs than the last; returns ((intervention, attached hook), log entry) for the first that
        succeeds, or (None, log entry)."""
        c = self.config
        for attempt in range(c.attack_attempts):
            pairs = harmful[: c.attack_n + 20 * attempt]
            intervention, handle = train_reft(
                model,
                context.tokenizer,
                pairs,
                layer,
                c.attack_rank,
                c.attack_lr,
                c.attack_epochs + 5 * attempt,
                16,
                context.seed + c.attack_attempts * round_ + attempt,
            )
            attacked = context.validation(model, ["harmful", "benign"])
            entry = {
                "layer": layer,
                "round": round_,
                "attempt": attempt,
                "hs_attacked": round(attacked["hs"], 4),
                "helpful_attacked": round(attacked["helpful"], 4),
            }
            if attack_succeeds(attacked["hs"], attacked["helpful"], start, c):
                return (intervention, handle), entry
            handle.remove()
        return None, entry
