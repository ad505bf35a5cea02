"""`booster`: attenuating harmful perturbation (Huang et al., "Booster", ICLR 2025).

Stage: alignment, with the defender's own harmful data (harmful requests answered compliantly,
paired with the same prompts' refusals in the alignment data, as in RepNoise's file that the
reference uses).

Update rule. f = alignment loss, h = harmful loss:
    min_w  f(w) + lambda * [ h(w) - h(w - alpha * grad h(w) / ||grad h(w)||) ]
First-order gradient (the Hessian term dropped, as in the paper):
    g = grad f(w) + lambda * grad h(w) - lambda * grad h(w~),   w~ = w - alpha * grad h / ||grad h||
3 forward + 3 backward passes per step (h at w, h at w~ on the same harmful batch, f at w).

Defaults: lambda = 5, alpha = 0.1 (reference `smooth_align.sh`); harmful batch = alignment batch
size (the reference hard-codes 10 for both). Training settings equal `sft`'s (the reference:
LoRA r = 32, alpha = 4 on q/k/v, lr 5e-4, 20 epochs).
Implementation: the perturbation applies to the trainable weights only (the LoRA adapter, as in
the reference), which are saved and copied back, not re-subtracted, so w is restored exactly;
the two harmful gradients enter through a linear surrogate <w, lambda (grad h - grad h~)>.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_defense
from ..training import lm_loss
from .base import AlignmentTraining, DefenseContext, Stage, align_with


@dataclass
class BoosterConfig(AlignmentTraining):
    lam: float = field(default=5.0, metadata={"help": "lambda, weight of the harmful-drop term (reference 5)"})
    alpha: float = field(default=0.1, metadata={"help": "step size of the simulated harmful step (reference 0.1)"})


def booster_gradient_terms(model, params: list[torch.Tensor], harmful: dict, alpha: float):
    """grad h(w) and grad h(w~) for the simulated normalised harmful step, w restored after."""
    grad_h = torch.autograd.grad(lm_loss(model, harmful), params)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad_h))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grad_h):
            p.sub_(alpha * g / (norm + 1e-12))
    grad_h_tilde = torch.autograd.grad(lm_loss(model, harmful), params)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return grad_h, grad_h_tilde


@register_defense("booster")
class Booster:
    stage = Stage.ALIGNMENT
    Config = BoosterConfig

    def __init__(self, config: BoosterConfig):
        self.config = config
        self.harmful = None

    def step_loss(self, model, batch):
        params = [p for p in model.parameters() if p.requires_grad]
        grad_h, grad_h_tilde = booster_gradient_terms(model, params, next(self.harmful), self.config.alpha)
        loss_f = lm_loss(model, batch)
        # d/dw of this surrogate = grad f + lambda (grad h - grad h~): the first-order Booster gradient.
        surrogate = sum((p * (self.config.lam * (a - b))).sum() for p, a, b in zip(params, grad_h, grad_h_tilde))
        return loss_f + surrogate, loss_f.item()

    def apply(self, model, context: DefenseContext):
        device = next(model.parameters()).device
        self.harmful = context.batch_stream(context.harmful_compliance_examples(), self.config.batch_size, device)
        return align_with(model, context, self.config, step_loss=self.step_loss, desc="align (booster)")
