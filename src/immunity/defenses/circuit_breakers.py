"""`circuit-breakers`: representation rerouting (Zou et al. 2024, "Circuit Breakers").

Stage: post-alignment. A LoRA adapter on the frozen `sft`-aligned model, merged after training.
Data: circuit-breaker set = the defender's harmful requests with compliant answers; retain set =
`sft`'s alignment data (refusals + helpful benign answers).

Loss at step t of T (reference `src/lorra_circuit_breaker.py`, `compute_loss`), with h_l the
hidden state l (0 = embedding output) and h_l^orig the same from the frozen model (adapter
disabled, no gradient), m the attention mask (every non-padding token of request and response):
    L_rr     = sum_{l in targets} sum_{tokens} ReLU(cos(h_l, h_l^orig)) . m / (|targets| * sum m)
    L_retain = mean over the stacked states l = 0..max(targets)+1 and over *all* positions of
               || (h_l - h_l^orig) . m ||_2      (padding positions count as zeros, as the
               reference's `nanmean` over the masked stack does)
    c_rr     = alpha * (1 - t / (2T)),   c_retain = alpha * t / (2T)
    L        = c_retain * L_retain + c_rr * L_rr
The reference divides t by 300 with 150 steps, so its schedule stops halfway (c_rr 10 -> 5,
c_retain 0 -> 5); t / (2T) keeps exactly that shape for any T. The reference drops the layers
after the highest target while training and puts the adapter on layers 0..max(targets) only
(`transform_layers=-1`, `drop_layers_after`): we keep the model whole (later layers do not
change the states above) and restrict the adapter the same way; the retain stack covers the
states those layers produce. Deviation: in the reference's truncated model the last retained
state has passed the final norm; ours has not.

Deliberate deviation: the adapter's B starts at N(0, 1e-4), not 0. At the reference's zero
init h = h^orig exactly, where both losses have zero gradient (cosine at its maximum, the norm
at zero): only rounding noise moves the adapter (measured: max gradient 9e-9 at step 1, below
AdamW's epsilon in float32; the reference trains in bf16, whose noise is far larger). With a
zero init our float32 runs stayed at cosine 1.000 (no change from `sft`) at lr 1e-4 and 1e-3,
and at lr 3e-3 escaped on two seeds of three; the tiny random B gives the losses a gradient
from the first step on every seed (`init_b_std=0` restores the reference's init).

lr and steps: chosen on the validation split (docs/history/reproduction.md). Round 2 (cosine over every
token) chose lr 1e-2, 300 steps by the rerouting criterion "mean cosine <= 0.1", which no
setting reached then. Round 5 re-selected at the calibrated attack (72 steps, seeds 0-2) with
the cosine on the harmful completions' tokens, by the project's rule (lowest HS after among
settings that keep helpfulness >= 90 % and the task; ties to the higher harmful NLL after):
lr 1e-2 / 300 steps, 1e-2 / 150, 3e-3 / 300 and 3e-3 / 150 give HS after 8.5 / 6.6 / 7.1 /
8.2 % (a tie: the per-seed spread is 4-6 points) and harmful NLL after 0.53 / 0.48 / 0.80 /
1.15; the rerouting cosine ends at 0.00 / 0.04 / 0.00 / 0.53. Hence lr 3e-3 and the
reference's 150 steps: less rerouting, but the attacker ends 0.6 nats further from the harmful
answers. The final cosine is recorded in `defense_notes`.

Defaults and provenance (`scripts/lorra_circuit_breaker_llama3_8b.sh` of the reference; `src/
args.py` has other defaults, lorra_alpha 5 and r 8, that the script overrides): alpha = 10,
batch 16, constant lr, no weight decay, LoRA r = 16, alpha 16, dropout 0.05 on all seven
linear maps; target layers 10 and 20 of Llama-3-8B's 32, i.e. hidden states at 10/32 and 20/32
of the depth (`default_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import IGNORE
from ..models import attach_lora, decoder_layers, merge_lora
from ..registry import register_defense
from ..training import TrainConfig, train
from .base import Defense, DefenseContext, Stage


@dataclass
class CircuitBreakersConfig:
    alpha: float = field(default=10.0, metadata={"help": "coefficient scale (reference 10)"})
    steps: int = field(default=150, metadata={"help": "training steps (reference 150; validation agrees)"})
    lr: float = field(default=3e-3, metadata={"help": "constant learning rate (reference 1e-4; chosen on validation)"})
    batch_size: int = field(default=16, metadata={"help": "examples per step in each set (reference 16)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (reference 16)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (reference 16)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (reference 0.05)"})
    target_layers: tuple[int, ...] = field(
        default=(),
        metadata={"help": "hidden-state indices rerouted (0 = embeddings); empty = 10/32 and 20/32 of the depth"},
    )
    init_b_std: float = field(
        default=1e-4,
        metadata={
            "help": "std of the adapter's B at init (0 = the reference's zero init, a stationary point; see the docstring)"
        },
    )

    def __post_init__(self) -> None:
        self.target_layers = tuple(int(t) for t in self.target_layers)
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.lora_r < 1 or self.init_b_std < 0:
            raise ValueError("circuit-breakers steps, lr, batch_size and lora_r must be positive")


def default_targets(n_layers: int) -> tuple[int, ...]:
    """Hidden-state indices at 10/32 and 20/32 of the depth (the reference's 10, 20 of 32)."""
    return tuple(sorted({max(1, round(n_layers * 10 / 32)), max(1, round(n_layers * 20 / 32))}))


def coefficients(step: int, total: int, alpha: float) -> tuple[float, float]:
    """(c_rr, c_retain) at `step` (1-based) of `total`."""
    progress = step / (2 * total)
    return alpha * (1 - progress), alpha * progress


def hidden_states(model, batch) -> tuple[torch.Tensor, ...]:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states


def rerouting_loss(states, originals, mask: torch.Tensor, targets) -> torch.Tensor:
    """sum over targets and masked tokens of ReLU(cos) / (|targets| * #masked tokens)."""
    keep = mask.to(states[0].dtype)
    per_layer = [(F.relu(F.cosine_similarity(states[l], originals[l], dim=-1)) * keep).sum() for l in targets]
    return torch.stack(per_layer).sum() / (len(targets) * keep.sum())


def retain_loss(states, originals, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the given states and all positions of ||(h - h_orig) . mask||."""
    keep = mask[..., None].to(states[0].dtype)
    return torch.stack([((s - o) * keep).norm(dim=-1) for s, o in zip(states, originals)]).mean()


@torch.no_grad()
def rerouting_cosine(model, batches: list[dict], targets) -> float:
    """Mean cos(h_l, h_l^orig) over the target states at the harmful completions' tokens (answer
    tokens; the prompt is shared with what the retain set keeps, so it says nothing about
    rerouting): 1 = not rerouted."""
    total, count = 0.0, 0.0
    for batch in batches:
        with model.disable_adapter():
            originals = hidden_states(model, batch)
        states = hidden_states(model, batch)
        keep = (batch["labels"] != IGNORE).to(states[0].dtype)
        for l in targets:
            total += (F.cosine_similarity(states[l], originals[l], dim=-1) * keep).sum().item()
            count += keep.sum().item()
    return total / count


@torch.no_grad()
def break_symmetry(model, std: float, seed: int) -> None:
    """B ~ N(0, std) instead of 0: the adapter starts a hair away from the frozen model, where the
    losses have a gradient (at B = 0 they have none)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)


def circuit_breaker_step(model, batch, retain: dict, step: int, total: int, alpha: float, targets):
    c_rr, c_retain = coefficients(step, total, alpha)
    depth = max(targets) + 2  # the states that the adapter (layers 0..max(targets)) can change
    with torch.no_grad(), model.disable_adapter():
        orig_cb, orig_retain = hidden_states(model, batch), hidden_states(model, retain)[:depth]
    l_rr = rerouting_loss(hidden_states(model, batch), orig_cb, batch["attention_mask"], targets)
    l_retain = retain_loss(hidden_states(model, retain)[:depth], orig_retain, retain["attention_mask"])
    return c_retain * l_retain + c_rr * l_rr


@register_defense("circuit-breakers")
class CircuitBreakers(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = CircuitBreakersConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        depth = len(decoder_layers(model))
        targets = c.target_layers or default_targets(depth)
        if not all(1 <= t <= depth for t in targets):
            raise ValueError(f"circuit-breakers target_layers {targets} outside 1..{depth}")
        device = next(model.parameters()).device
        retain = context.batch_stream(context.alignment_examples(), c.batch_size, device)
        model = attach_lora(
            model,
            c.lora_r,
            c.lora_alpha,
            seed=context.seed,
            dropout=c.lora_dropout,
            layers=list(range(max(targets) + 1)),
        )
        break_symmetry(model, c.init_b_std, context.seed)

        def step(model, batch, step):
            return circuit_breaker_step(model, batch, next(retain), step, c.steps, c.alpha, targets)

        cfg = TrainConfig(lr=c.lr, max_steps=c.steps, batch_size=c.batch_size, seed=context.seed)
        train(
            model,
            context.encode(context.harmful_compliance_examples()),
            cfg,
            context.tokenizer.pad_token_id,
            step_loss=step,
            desc="circuit breakers",
            progress=context.progress,
        )
        held_out = context.fixed_batches(context.harmful_compliance_examples("val"), 32, device)
        cosine = rerouting_cosine(model.eval(), held_out, targets)
        model = merge_lora(model)
        context.note(targets=list(targets), val_cosine=round(cosine, 4))
        return model
