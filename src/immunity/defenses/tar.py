"""`tar`: tamper-resistant safeguards (Tamirisa et al., "Tamper-Resistant Safeguards for
Open-Weight LLMs", ICLR 2025).

Stage: post-alignment (TAR starts from an already safety-tuned model, Llama-3-8B-Instruct in the
paper); full-parameter, as the reference.

Phase 0, random mapping (reference `modules/training.py`, `random_mapping_training_loop`, and
`modules/objectives.py`, `random_vector_cosine_obj`): a fixed random matrix R (V x d); on every
non-padding token x_t of harmful sequences, every hidden state h_l (the embedding output
included) is pushed towards the random vector R[x_t] (loss mean_l mean_t 1 - |cos(h_l, R[x_t])|),
plus the LM loss on retain data, with its own AdamW. The reference then starts phase 1 from the
random-mapped checkpoint (`run_tar_bio.sh`: `--base_model_name ...-Random-Mapped-Bio`) with a
fresh optimizer; so do we. Its phase-0 hyperparameters are not published: ours were set once
(`random_mapping_steps`, `random_mapping_lr`) and the cosine loss before/after is reported.

Phase 1, per outer step (`tar_training_loop`, `modules/training.py:864-1140`):
  1. save theta; sample an adversary: learning rate from `adversary_lrs`, and with probability
     `switch_probability` a benign-then-harmful adversary that trains on benign data (helpful
     answers) until step floor(Beta(6, 3) * K), then on harmful data; else harmful throughout;
  2. sample ONE held-out tamper-resistance batch x_TR for this adversary (the reference draws
     `meta_forget_batches` once per adversary and reuses it at every TR evaluation);
  3. K inner steps with a fresh AdamW on the adversary's data; after every s-th step, the
     gradient of w_k * (-H(softmax(logits(x_TR)))) at the attacked weights theta'_k is added to
     a buffer (first order: the gradient at theta' is applied to theta);
  4. restore theta exactly (a copy, not an undo: bit-identical);
  5. retain loss at theta: LM CE on retain data + mean over all hidden states (the embedding
     output included) of the mean over tokens of ||h_theta(x_r) - h_ref(x_r)||_2 (not squared),
     h_ref from a frozen copy of the model TAR started from (`obj_model_mse_representations`);
  6. one outer AdamW step on grad(retain) + the tamper buffer.
Weights: w_k proportional to exp(tamper_growth * (k - (K - 1))), scaled so that their sum over
the TR steps equals `tamper_total`. The reference (K = 64, s = 4, w_k = 4 exp(0.0625 (k - 63)),
`run_tar_bio.sh`, `schedule` at `training.py:831`) puts a total weight of 17.75 on its 16 TR
gradients per adversary, relative to a retain loss of weight 1; we match that total with
K = 16 (growth 0.25 keeps the reference's e^-4 span over the horizon).
Ideal cost per outer step: K adversary steps + K/s entropy passes + 1 retain step + 1 reference
forward (benchmarks/step_cost.py measures ours against it).

Defaults and provenance (reference `run_tar_bio.sh`, scaled to SafetyWorld): K = 64, s = 4,
750 outer steps, adversary lr in {2e-6, 2e-5, 4e-5} on an 8B model, outer ScheduleFree AdamW
2e-5 with 32 warm-up steps. Here: K = 16, s = 4, 40 outer steps, adversary lrs {3e-5, 1e-4,
3e-4} (full fine-tuning of the 1M-parameter world model; the default attack is LoRA at 3e-4),
outer AdamW 5e-5 with 4 warm-up steps (plain AdamW; no schedule-free optimizer in our
dependencies), chosen on validation: with the reference's total TR weight the earlier 1e-4
left helpfulness at 12 %, 5e-5 keeps it at 91 % (2e-5: 98 %, with a higher HS after).
Retain data: the `sft` alignment data (refusals + helpful answers), so the safeguard is kept;
the reference's retain data are general text and its TR loss on the refusal setting is DPO.
Deviations: (1) the reference computes the entropy over every position, padding included
(pad = eos); we take it over the positions that predict answer tokens only. (2) The reference's
representation and random-mapping means include padding positions; ours cover non-padding
tokens. (3) The reference counts the TR loss only when it is above -ln|V| unless `--unbounded`,
which its scripts pass; we always count it. (4) The reference's frozen reference model is the
original Instruct model; ours is the model TAR starts from (the `sft`-aligned one), the same role.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..models import clone_model
from ..registry import register_defense
from ..training import check_finite, lm_loss
from ..training.losses import answer_mask, token_ce, upcast
from ..training.parallel import accumulate
from .base import Defense, DefenseContext, Stage


@dataclass
class TARConfig:
    outer_steps: int = field(default=40, metadata={"help": "outer steps (reference 750)"})
    inner_steps: int = field(default=16, metadata={"help": "K adversary steps per outer step (reference 64)"})
    entropy_every: int = field(
        default=4, metadata={"help": "s: tamper-resistance gradient every s inner steps (reference 4)"}
    )
    adversary_lrs: tuple[float, ...] = field(
        default=(3e-5, 1e-4, 3e-4), metadata={"help": "adversary AdamW lrs, sampled uniformly"}
    )
    switch_probability: float = field(default=1 / 3, metadata={"help": "share of retain-then-harmful adversaries"})
    lr: float = field(
        default=5e-5,
        metadata={"help": "outer AdamW learning rate (reference 2e-5, ScheduleFree; chosen on validation)"},
    )
    warmup_steps: int = field(default=4, metadata={"help": "outer warm-up steps (reference 32 of 750)"})
    batch_size: int = field(default=16, metadata={"help": "examples per batch, inner and outer"})
    tamper_total: float = field(
        default=17.75,
        metadata={
            "help": "sum of w_k over one adversary's TR gradients (reference: 4 * sum_j exp(-0.25 j), j < 16 = 17.75)"
        },
    )
    tamper_growth: float = field(
        default=0.25, metadata={"help": "exponent rate of w_k over k (reference 0.0625 at K=64)"}
    )
    representation_weight: float = field(default=1.0, metadata={"help": "weight of the hidden-state L2 retain term"})
    random_mapping_steps: int = field(default=40, metadata={"help": "phase-0 random-mapping steps (0 = off)"})
    random_mapping_lr: float = field(default=1e-4, metadata={"help": "phase-0 AdamW learning rate"})
    grad_clip: float = field(default=1.0, metadata={"help": "outer gradient-norm clip"})

    def __post_init__(self) -> None:
        self.adversary_lrs = tuple(float(x) for x in self.adversary_lrs)
        if self.inner_steps < 1 or self.entropy_every < 1:
            raise ValueError("tar inner_steps and entropy_every must be >= 1")
        if not self.adversary_lrs or min(self.adversary_lrs) <= 0:
            raise ValueError("tar adversary_lrs must be a non-empty list of positive learning rates")
        if self.outer_steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.random_mapping_steps < 0:
            raise ValueError("tar outer_steps, lr and batch_size must be positive, random_mapping_steps >= 0")
        if not 0 <= self.switch_probability <= 1:
            raise ValueError(f"tar switch_probability must lie in [0, 1], got {self.switch_probability}")


def negative_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-H(softmax(logits)) averaged over the positions that predict answer tokens (no padding)."""
    logits = logits[answer_mask(labels)]
    log_p = F.log_softmax(upcast(logits), dim=-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def tamper_loss(model, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return negative_entropy(logits, batch["labels"])


def tamper_weights(inner_steps: int, every: int, total: float, growth: float) -> dict[int, float]:
    """w_k for the TR steps k (every `every`-th inner step), proportional to
    exp(growth * (k - (K - 1))) and summing to `total`."""
    steps = [k for k in range(inner_steps) if (k + 1) % every == 0]
    raw = {k: math.exp(growth * (k - (inner_steps - 1))) for k in steps}
    return {k: total * w / sum(raw.values()) for k, w in raw.items()}


def tamper_gradient(
    model, params: list[torch.Tensor], adversary: list[dict], tr_batch: dict, lr: float, weights: dict[int, float]
) -> tuple[list[torch.Tensor], list[float]]:
    """Run the adversary (fresh AdamW, one step per batch in `adversary`); after each step k in
    `weights`, add weights[k] * grad(-H on `tr_batch`) at the attacked weights to a buffer;
    restore the weights bit for bit; return the buffer and the TR losses."""
    saved = [p.detach().clone() for p in params]
    buffer = [torch.zeros_like(p) for p in params]
    losses = []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for k, batch in enumerate(adversary):
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        optimizer.step()
        if k in weights:
            loss = tamper_loss(model, tr_batch)
            for b, g in zip(buffer, torch.autograd.grad(loss, params)):
                b.add_(weights[k] * g)
            losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return buffer, losses


def retain_loss(model, reference, batch: dict, representation_weight: float = 1.0) -> torch.Tensor:
    """LM CE + mean over all hidden states (embedding output included) of the mean over
    non-padding tokens of ||h - h_ref||_2."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "output_hidden_states": True}
    out = model(**kwargs)
    with torch.no_grad():
        ref = reference(**kwargs).hidden_states
    keep = batch["attention_mask"].bool()
    distance = torch.stack([(h - r)[keep].norm(dim=-1).mean() for h, r in zip(out.hidden_states, ref)]).mean()
    return token_ce(out.logits, batch["labels"]) + representation_weight * distance


def random_mapping_loss(model, batch: dict, mapping: torch.Tensor) -> torch.Tensor:
    """mean over all hidden states and non-padding tokens of 1 - |cos(h_l(x_t), R[x_t])|."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    targets = mapping[batch["input_ids"][keep]]
    return torch.stack(
        [1 - F.cosine_similarity(h[keep], targets, dim=-1).abs().mean() for h in out.hidden_states]
    ).mean()


def random_mapping(model, params, forget, retain, config: TARConfig, seed: int) -> list[float]:
    """Phase 0 with its own AdamW; returns the random-mapping loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    mapping = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=generator)
    mapping = mapping.to(next(model.parameters()).device)
    optimizer = torch.optim.AdamW(params, lr=config.random_mapping_lr, weight_decay=0.0)

    def gradient() -> float:
        loss = random_mapping_loss(model, next(forget), mapping)
        (loss + lm_loss(model, next(retain))).backward()
        return loss.item()

    log = []
    for step in range(1, config.random_mapping_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        log.append(accumulate(params, gradient, seed, step))
        check_finite(log[-1], "tar (random mapping)", step)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return log


@register_defense("tar")
class TAR(Defense):
    stage = Stage.POST_ALIGNMENT
    supports_fsdp = False  # its own loops and adversary steps on the weights; data parallel replicates it
    Config = TARConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        reference = clone_model(model).eval()  # the model TAR starts from, frozen
        reference.requires_grad_(False)
        params = list(model.parameters())  # full-parameter
        harmful = context.harmful_compliance_examples()
        half = len(harmful) // 2  # the adversary's data and the held-out tamper-resistance batches
        adversary_data = context.batch_stream(harmful[:half], c.batch_size, device)
        held_out = context.batch_stream(harmful[half:], c.batch_size, device)
        benign = context.batch_stream(context.benign_examples(), c.batch_size, device)
        retain = context.batch_stream(context.alignment_examples(), c.batch_size, device)
        weights = tamper_weights(c.inner_steps, c.entropy_every, c.tamper_total, c.tamper_growth)
        rng = random.Random(context.seed)
        model.train()
        mapping_log = random_mapping(model, params, adversary_data, retain, c, context.seed)
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0)
        schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=c.warmup_steps)
        tamper_log = []

        def gradient(lr: float, switch: int) -> tuple[float, float]:
            """Tamper-resistance gradient (the simulated adversary, on this shard) plus retain."""
            adversary = [next(benign) if k < switch else next(adversary_data) for k in range(c.inner_steps)]
            buffer, losses = tamper_gradient(model, params, adversary, next(held_out), lr, weights)
            optimizer.zero_grad(set_to_none=True)
            loss = retain_loss(model, reference, next(retain), c.representation_weight)
            loss.backward()
            for p, b in zip(params, buffer):
                p.grad.add_(b)
            return sum(losses) / max(len(losses), 1), loss.item()

        for step in tqdm(range(1, c.outer_steps + 1), desc="tar", disable=not context.progress, leave=False):
            lr = rng.choice(c.adversary_lrs)  # drawn once per step: every shard simulates the same attacker
            switch = int(rng.betavariate(6, 3) * c.inner_steps) if rng.random() < c.switch_probability else 0
            tamper, retained = accumulate(params, lambda: gradient(lr, switch), context.seed, step)
            tamper_log.append(tamper)
            check_finite(tamper, "tar (tamper resistance)", step)
            check_finite(retained, "tar (retain)", step)
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            optimizer.step()
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        context.note(
            random_mapping_loss_first=round(mapping_log[0], 4) if mapping_log else None,
            random_mapping_loss_last=round(mapping_log[-1], 4) if mapping_log else None,
            tamper_loss_first=round(tamper_log[0], 4),
            tamper_loss_last=round(tamper_log[-1], 4),
        )
        return model
