"""`circuit-breakers`: representation rerouting (Zou et al. 2024, "Circuit Breakers").

Stage: post-alignment. A LoRA adapter on the frozen `sft`-aligned model, merged after training.
Data: circuit-breaker set = the defender's harmful requests answered compliantly; retain set =
`sft`'s alignment data (refusals + helpful benign answers).

Loss at step t of T, with h_l the hidden state after layer l, h_l^orig the same from the frozen
model (adapter disabled, no gradient):
    L_rr     = sum_{l in targets} sum_{answer tokens} ReLU(cos(h_l, h_l^orig)) / #answer tokens
    L_retain = mean over layers and non-padding tokens of ||h_l - h_l^orig||_2    (retain batch)
    c_rr     = alpha * (1 - t / (2T)),   c_retain = alpha * t / (2T)
    L        = c_retain * L_retain + c_rr * L_rr
The reference divides t by 300 with 150 steps, so its schedule stops halfway (c_rr 10 -> 5,
c_retain 0 -> 5); t / (2T) keeps exactly that shape for any T.

Defaults: alpha = 10, 150 steps, lr 1e-4 constant, LoRA r = 16, alpha 16 (reference
`src/args.py`, GraySwanAI/circuit-breakers); target layers at about 1/3 and 2/3 of the depth
(the reference's 10 and 20 of Llama-3-8B's 32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models import attach_lora, decoder_layers, merge_lora
from ..registry import register_defense
from ..training import TrainConfig, train
from ..training.losses import answer_mask
from .base import DefenseContext, Stage


@dataclass
class CircuitBreakersConfig:
    alpha: float = field(default=10.0, metadata={"help": "coefficient scale (reference 10)"})
    steps: int = field(default=150, metadata={"help": "training steps (reference 150)"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate, constant (reference 1e-4)"})
    batch_size: int = field(default=16, metadata={"help": "examples per step in each set (reference 16)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (reference 16)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (reference 16)"})
    target_layers: tuple[int, ...] = field(default=(), metadata={
        "help": "layers whose output is rerouted; empty = about 1/3 and 2/3 of the depth"})


def default_targets(n_layers: int) -> tuple[int, ...]:
    """Hidden-state indices (1 = after the first layer) at about 1/3 and 2/3 of the depth."""
    return tuple(sorted({max(1, round(n_layers / 3)), max(1, round(2 * n_layers / 3))}))


def coefficients(step: int, total: int, alpha: float) -> tuple[float, float]:
    """(c_rr, c_retain) at `step` (1-based) of `total`."""
    progress = step / (2 * total)
    return alpha * (1 - progress), alpha * progress


def hidden_states(model, batch) -> tuple[torch.Tensor, ...]:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 output_hidden_states=True).hidden_states


def rerouting_loss(states, originals, mask, targets) -> torch.Tensor:
    per_layer = [F.relu(F.cosine_similarity(states[l][mask], originals[l][mask], dim=-1)).sum() for l in targets]
    return torch.stack(per_layer).sum() / mask.sum()


def retain_loss(states, originals, mask) -> torch.Tensor:
    return torch.stack([(s[mask] - o[mask]).norm(dim=-1).mean() for s, o in zip(states[1:], originals[1:])]).mean()


@register_defense("circuit-breakers")
class CircuitBreakers:
    stage = Stage.POST_ALIGNMENT
    Config = CircuitBreakersConfig

    def __init__(self, config: CircuitBreakersConfig):
        self.config = config
        self.retain = None
        self.step = 0
        self.targets: tuple[int, ...] = ()

    def step_loss(self, model, batch):
        self.step += 1
        c_rr, c_retain = coefficients(self.step, self.config.steps, self.config.alpha)
        retain = next(self.retain)
        with torch.no_grad(), model.disable_adapter():
            orig_cb, orig_retain = hidden_states(model, batch), hidden_states(model, retain)
        l_rr = rerouting_loss(hidden_states(model, batch), orig_cb, answer_mask(batch["labels"]), self.targets)
        l_retain = retain_loss(hidden_states(model, retain), orig_retain, retain["attention_mask"].bool())
        return c_retain * l_retain + c_rr * l_rr

    def apply(self, model, context: DefenseContext):
        c = self.config
        self.targets = c.target_layers or default_targets(len(decoder_layers(model)))
        device = next(model.parameters()).device
        self.retain = context.batch_stream(context.alignment_examples(), c.batch_size, device)
        self.step = 0
        torch.manual_seed(context.seed)  # the adapter's init must not depend on what ran before
        model = attach_lora(model, c.lora_r, c.lora_alpha)
        cfg = TrainConfig(lr=c.lr, max_steps=c.steps, batch_size=c.batch_size, seed=context.seed)
        train(model, context.encode(context.harmful_compliance_examples()), cfg, context.tokenizer.pad_token_id,
              step_loss=self.step_loss, desc="circuit breakers", progress=context.progress)
        return merge_lora(model)
