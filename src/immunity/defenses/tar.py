"""`tar`: tamper-resistant safeguards (Tamirisa et al., "Tamper-Resistant Safeguards for
Open-Weight LLMs", ICLR 2025).

Stage: post-alignment (TAR starts from an already safety-tuned model, Llama-3-8B-Instruct in the
paper); full-parameter, as the reference.

Optional phase 0, random mapping (`random_mapping_steps` > 0): a fixed random matrix R (V x d);
on harmful answer tokens align every layer's hidden state h_l(x_t) with the random vector
R[x_t] (loss 1 - |cos(h_l(x_t), R[x_t])|, mean over layers and tokens), plus CE on retain
data, so harmful representations lose their learned structure before phase 1.

Phase 1, per outer step:
  1. save theta; sample an adversary: learning rate from `adversary_lrs`, and with probability
     `switch_probability` a retain-then-harmful adversary that switches to harmful data at step
     floor(Beta(6, 3) * K), else harmful data throughout;
  2. K inner steps with a fresh AdamW (no weight decay, as our attack) on the adversary's data;
     after every s-th step, the gradient of the tamper-resistance loss at the attacked weights
     theta'_k, w_k * (-H(softmax(logits(x_TR)))), on a held-out harmful batch x_TR, is added to
     a buffer (first order: the gradient at theta' is applied to theta), with
     w_k = tamper_scale * exp(tamper_growth * (k - (K - 1)));
  3. restore theta exactly (a copy, not an undo: bit-identical);
  4. retain loss at theta: LM CE on retain data + mean over layers of mean over tokens of
     ||h_theta(x_r) - h_ref(x_r)||_2 (not squared) to a frozen copy of the starting model;
  5. one outer AdamW step on grad(retain) + the tamper buffer.
Ideal cost per outer step: K adversary steps + K/s entropy passes + 1 retain step + 1 reference
forward (benchmarks/step_cost.py measures ours against it).

Defaults and provenance (reference `run_tar_bio.sh`, scaled to SafetyWorld): K = 64, s = 4,
750 outer steps, adversary lr in {2e-6, 2e-5, 4e-5} on an 8B model, outer ScheduleFree AdamW
2e-5 with 32 warm-up steps, w_k = 4 exp(0.0625 (k - 63)). Here: K = 16, s = 4, 40 outer steps,
adversary lrs {3e-5, 1e-4, 3e-4} (full fine-tuning of the 1M-parameter world model; the default
attack is LoRA at 3e-4), outer AdamW 1e-4 with 4 warm-up steps (plain AdamW; no schedule-free
optimizer in our dependencies), tamper_growth 0.25 so that growth * K = 4 as in the reference.
Retain data: the `sft` alignment data (refusals + helpful answers), so the safeguard is kept;
the reference's retain data are general text and its TR loss on the refusal setting is DPO.
Deviations: (1) the reference computes the entropy over every position, padding included
(pad = eos); we take it over the positions that predict answer tokens only. (2) The reference
counts the TR loss only when it is above -ln|V| unless `--unbounded`, which its scripts pass;
we always count it. (3) The reference's frozen reference model is the original Instruct model;
ours is the model TAR starts from (the `sft`-aligned one), which is the same role.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..registry import register_defense
from ..training import lm_loss
from ..training.losses import answer_mask, token_ce, upcast
from ..world import clone_model
from .base import DefenseContext, Stage


@dataclass
class TARConfig:
    outer_steps: int = field(default=40, metadata={"help": "outer steps (reference 750)"})
    inner_steps: int = field(default=16, metadata={"help": "K adversary steps per outer step (reference 64)"})
    entropy_every: int = field(default=4, metadata={"help": "s: tamper-resistance gradient every s inner steps (reference 4)"})
    adversary_lrs: tuple[float, ...] = field(default=(3e-5, 1e-4, 3e-4),
                                             metadata={"help": "adversary AdamW lrs, sampled uniformly"})
    switch_probability: float = field(default=1 / 3, metadata={"help": "share of retain-then-harmful adversaries"})
    lr: float = field(default=1e-4, metadata={"help": "outer AdamW learning rate (reference 2e-5, ScheduleFree)"})
    warmup_steps: int = field(default=4, metadata={"help": "outer warm-up steps (reference 32 of 750)"})
    batch_size: int = field(default=16, metadata={"help": "examples per batch, inner and outer"})
    tamper_scale: float = field(default=4.0, metadata={"help": "w_k at the last inner step (reference 4)"})
    tamper_growth: float = field(default=0.25, metadata={"help": "exponent rate of w_k over k (reference 0.0625 at K=64)"})
    representation_weight: float = field(default=1.0, metadata={"help": "weight of the hidden-state L2 retain term"})
    random_mapping_steps: int = field(default=0, metadata={"help": "phase-0 random-mapping steps (0 = off)"})
    grad_clip: float = field(default=1.0, metadata={"help": "outer gradient-norm clip"})

    def __post_init__(self) -> None:
        self.adversary_lrs = tuple(float(x) for x in self.adversary_lrs)
        if self.inner_steps < 1 or self.entropy_every < 1:
            raise ValueError("tar inner_steps and entropy_every must be >= 1")
        if not self.adversary_lrs:
            raise ValueError("tar adversary_lrs is empty")


def negative_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-H(softmax(logits)) averaged over the positions that predict answer tokens (no padding)."""
    logits = logits[answer_mask(labels)]
    log_p = F.log_softmax(upcast(logits), dim=-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def tamper_loss(model, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return negative_entropy(logits, batch["labels"])


def tamper_gradient(model, params: list[torch.Tensor], adversary: list[dict], held_out: list[dict],
                    lr: float, every: int, weight) -> tuple[list[torch.Tensor], list[float]]:
    """Run the adversary (fresh AdamW, one step per batch in `adversary`), add
    weight(k) * grad(-H) at the attacked weights after every `every`-th step (k = that step's
    index, batch held_out[k // every]), restore the weights bit for bit, return the buffer."""
    saved = [p.detach().clone() for p in params]
    buffer = [torch.zeros_like(p) for p in params]
    losses = []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for k, batch in enumerate(adversary):
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        optimizer.step()
        if (k + 1) % every == 0:
            loss = tamper_loss(model, held_out[k // every])
            for b, g in zip(buffer, torch.autograd.grad(loss, params)):
                b.add_(weight(k) * g)
            losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return buffer, losses


def retain_loss(model, reference, batch: dict, representation_weight: float = 1.0) -> torch.Tensor:
    """LM CE + mean over layers of mean over (non-padding) tokens of ||h - h_ref||_2."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "output_hidden_states": True}
    out = model(**kwargs)
    with torch.no_grad():
        ref = reference(**kwargs).hidden_states
    keep = batch["attention_mask"].bool()
    distance = torch.stack([(h - r)[keep].norm(dim=-1).mean() for h, r in zip(out.hidden_states[1:], ref[1:])]).mean()
    return token_ce(upcast(out.logits), batch["labels"]) + representation_weight * distance


def random_mapping_loss(model, batch: dict, mapping: torch.Tensor) -> torch.Tensor:
    """mean over layers and answer tokens of 1 - |cos(h_l(x_t), R[x_t])|."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    mask = answer_mask(batch["labels"])
    targets = mapping[batch["input_ids"][mask]]
    return torch.stack([1 - F.cosine_similarity(h[mask], targets, dim=-1).abs().mean()
                        for h in out.hidden_states[1:]]).mean()


@register_defense("tar")
class TAR:
    stage = Stage.POST_ALIGNMENT
    Config = TARConfig

    def __init__(self, config: TARConfig):
        self.config = config

    def weight(self, k: int) -> float:
        c = self.config
        return c.tamper_scale * math.exp(c.tamper_growth * (k - (c.inner_steps - 1)))

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        reference = clone_model(model).to(device).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        params = list(model.parameters())  # full-parameter
        harmful = context.harmful_compliance_examples()
        half = len(harmful) // 2  # the adversary's data and the held-out tamper-resistance batches
        adversary_data = context.batch_stream(harmful[:half], c.batch_size, device)
        held_out = context.batch_stream(harmful[half:], c.batch_size, device)
        retain = context.batch_stream(context.alignment_examples(), c.batch_size, device)
        rng = random.Random(context.seed)
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0)
        schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=c.warmup_steps)
        model.train()
        if c.random_mapping_steps:
            self.random_mapping(model, params, optimizer, adversary_data, retain, context)
        tamper_log = []
        for _ in tqdm(range(c.outer_steps), desc="tar", disable=not context.progress, leave=False):
            lr = rng.choice(c.adversary_lrs)
            switch = int(rng.betavariate(6, 3) * c.inner_steps) if rng.random() < c.switch_probability else 0
            adversary = [next(retain) if k < switch else next(adversary_data) for k in range(c.inner_steps)]
            tr_batches = [next(held_out) for _ in range(c.inner_steps // c.entropy_every)]
            buffer, losses = tamper_gradient(model, params, adversary, tr_batches, lr, c.entropy_every, self.weight)
            tamper_log.append(sum(losses) / max(len(losses), 1))
            optimizer.zero_grad(set_to_none=True)
            retain_loss(model, reference, next(retain), c.representation_weight).backward()
            for p, b in zip(params, buffer):
                p.grad.add_(b)
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            optimizer.step()
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        model.config.immunity_notes = {"tamper_loss_first": round(tamper_log[0], 4) if tamper_log else None,
                                       "tamper_loss_last": round(tamper_log[-1], 4) if tamper_log else None}
        return model

    def random_mapping(self, model, params, optimizer, forget, retain, context: DefenseContext) -> None:
        generator = torch.Generator().manual_seed(context.seed)
        mapping = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=generator)
        mapping = mapping.to(next(model.parameters()).device)
        for _ in range(self.config.random_mapping_steps):
            optimizer.zero_grad(set_to_none=True)
            (random_mapping_loss(model, next(forget), mapping) + lm_loss(model, next(retain))).backward()
            optimizer.step()
