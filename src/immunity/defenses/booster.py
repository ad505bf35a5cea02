"""`booster`: attenuating harmful perturbation (Huang et al., "Booster", ICLR 2025).

Stage: alignment, with the defender's own harmful data (harmful requests answered compliantly,
paired with the same prompts' refusals in the alignment data, as in RepNoise's file that the
reference uses).

Update rule. f = alignment loss, h = harmful loss:
    min_w  f(w) + lambda * [ h(w) - h(w - alpha * grad h(w) / ||grad h(w)||) ]
First-order gradient (the Hessian term dropped, as in the paper):
    g = grad f(w) + lambda * grad h(w) - lambda * grad h(w~),   w~ = w - alpha * grad h / (||grad h|| + 1e-7)
3 forward + 3 backward passes per step (h at w, h at w~ on the same harmful batch, f at w);
the perturbation moves the trainable weights only, i.e. the LoRA adapter.

Defaults and provenance (git-disl/Booster): lambda = 5 (`script/alignment/smooth_align.sh`,
`lamb=${1:-5}`); the norm's 1e-7 (`trainer.py`, `BoosterAlignmentTrainer.training_step`). alpha
is a step length in *adapter* space, so the adapter is the reference's: LoRA r = 32, alpha 4
(scale 0.125), on q/k/v only, no dropout (`train.py:285, 335-343`). Harmful batch = the
alignment batch size (the reference hard-codes 10 for both).
Chosen on the validation split (docs/history/reproduction.md), because the reference's values do not
work here: this adapter needs a larger step than `sft`'s to learn refusal at all (plain SFT with
it: HS before 74 % at lr 1e-3 for 2 epochs, 5 % for 8 epochs, 2 % at lr 4e-3 for 8 epochs), so
lr 4e-3 (cosine, as `sft`) for 8 epochs (the reference: lr 5e-4 constant for 20 epochs over
5000 pairs, about 16x our steps); and at that budget the reference alpha = 0.1 keeps the model
from aligning (HS before 30 %; lambda = 1 aligns), while alpha = 0.01 aligns; no setting tried
(lambda 1-20, alpha 0.01-0.1) lowered HS after the attack below `sft`'s on this adapter.
Implementation: as the reference's step, three backward passes and the harmful term added to
the gradient after the alignment loss's backward: `.grad += lambda (grad h - grad h~)` (it costs
what the reference's step costs, benchmarks/step_cost.py); w is saved and copied back rather
than re-added (bit-exact restore).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from ..registry import register_defense
from ..training import lm_loss
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_against_harmful


@dataclass
class BoosterConfig(AlignmentTraining):
    lora_r: int = field(default=32, metadata={"help": "LoRA rank (reference train.py: 32)"})
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA alpha (reference train.py: 4)"})
    lora_targets: str = field(default="qkv", metadata={"help": "LoRA on: all | attention | qkv (reference: q/k/v)"})
    lr: float = field(
        default=4e-3,
        metadata={"help": "learning rate (reference 5e-4 for 20 epochs; chosen on validation for this adapter)"},
    )
    epochs: float = field(default=8.0, metadata={"help": "passes over the alignment data (reference 20)"})
    lam: float = field(default=5.0, metadata={"help": "lambda, weight of the harmful-drop term (reference 5)"})
    alpha: float = field(
        default=0.01,
        metadata={"help": "step length of the simulated harmful step (reference 0.1; 0.01 chosen on validation)"},
    )


def booster_gradient_terms(model, params: list[torch.Tensor], harmful: dict, alpha: float):
    """grad h(w) and grad h(w~) for the simulated normalised harmful step, w restored after."""
    grad_h = torch.autograd.grad(lm_loss(model, harmful), params)
    norm = torch.sqrt(cast(torch.Tensor, sum(g.pow(2).sum() for g in grad_h)))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grad_h):
            p.sub_(alpha * g / (norm + 1e-7))
    grad_h_tilde = torch.autograd.grad(lm_loss(model, harmful), params)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return grad_h, grad_h_tilde


def booster_loss(model, batch, harmful: dict, lam: float, alpha: float):
    """Writes the first-order Booster gradient into `.grad` (grad f by backward, then
    lambda (grad h - grad h~) added); returns (None, the alignment loss to log), the training
    loop's form for a step that wrote its own gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    grad_h, grad_h_tilde = booster_gradient_terms(model, params, harmful, alpha)
    loss_f = lm_loss(model, batch)
    loss_f.backward()
    with torch.no_grad():
        for p, a, b in zip(params, grad_h, grad_h_tilde):
            p.grad.add_(a - b, alpha=lam)
    return None, loss_f.item()


@register_defense("booster")
class Booster(Defense):
    stage = Stage.ALIGNMENT
    supports_fsdp = False  # differentiates w.r.t. the weights (torch.autograd.grad): not on FSDP's shards
    Config = BoosterConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        return align_against_harmful(
            model, context, c, lambda m, b, h: booster_loss(m, b, h, c.lam, c.alpha), desc="align (booster)"
        )
