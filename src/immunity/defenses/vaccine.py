"""`vaccine`: perturbation-aware alignment (Huang, Hu, Liu, "Vaccine", NeurIPS 2024).

Stage: alignment (safe data only: our refusals + helpful benign answers, like `sft`).

Update rule (first-order SAM on hidden states). With e_l the output of layer l's attention block
and L the alignment loss:
    pass 1:  g_l = dL/de_l for every layer l;  eps_l = rho * g_l / (||g|| + 1e-7),
             ||g|| = sqrt(sum_l ||g_l||^2)  (one global norm over all layers)
    pass 2:  the weights' gradient is that of L(w; e_l + eps_l), eps held fixed (no gradient
             through eps); only pass 2's gradient updates the weights.
i.e. min_w max_{||eps|| <= rho} L(w; e + eps) to first order.

Defaults and provenance (git-disl/Vaccine): rho = 2 (`train.py:253`, the `--rho` default;
`script/alignment/Vaccine.sh` takes rho as its first argument); the reference adapter, LoRA r = 8, alpha = 4, dropout 0.1 on all
seven linear maps (`train.py:378-386`); lr 1e-3 cosine as the reference (and `sft`). Epochs: 8,
chosen on the validation split (docs/history/reproduction.md): this adapter (scale alpha / r = 0.5, a
quarter of `sft`'s 2) does not learn refusal in `sft`'s 2 epochs (HS before 30 %), 4 epochs are at
the edge (4.9 %), 8 align (1.4 %); the reference trains 50 epochs on 2000 BeaverTails pairs.
Compare with `sft` on the same adapter and budget (the matched baseline in docs/results.md).
Deviation for speed, not for results: pass 1 differentiates to the attention outputs only
(`torch.autograd.grad`), not to the weights, since the reference discards pass 1's weight
gradients anyway (`trainer.py`, `model.zero_grad()` between the passes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import cast

import torch

from ..registry import register_defense
from ..training import edit_block_outputs, lm_loss
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class VaccineConfig(AlignmentTraining):
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (reference train.py: 8)"})
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA alpha (reference train.py: 4)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (reference train.py: 0.1)"})
    epochs: float = field(
        default=8.0,
        metadata={
            "help": "passes over the alignment data (reference 50; chosen on "
            "validation: the reference adapter needs 4x sft's 2)"
        },
    )
    rho: float = field(default=2.0, metadata={"help": "perturbation radius (reference train.py:253: 2)"})


def attention_gradients(model, batch, layers: list[int] | None = None):
    """Pass 1: the loss and its gradient w.r.t. each (chosen) layer's attention output."""
    outputs: dict[int, torch.Tensor] = {}

    def keep(index, output):
        outputs[index] = output

    with edit_block_outputs(model, "attention", keep, layers):
        loss = lm_loss(model, batch)
    layers = sorted(outputs)
    grads = torch.autograd.grad(loss, [outputs[i] for i in layers])
    return loss.detach(), dict(zip(layers, grads))


def perturbations(grads: dict[int, torch.Tensor], rho: float) -> dict[int, torch.Tensor]:
    """eps_l = rho * g_l / (||g|| + 1e-7), one norm over all given layers."""
    norm = torch.sqrt(cast(torch.Tensor, sum(g.pow(2).sum() for g in grads.values())))
    return {i: rho * g / (norm + 1e-7) for i, g in grads.items()}


def perturbed_loss(model, batch, eps: dict[int, torch.Tensor]) -> torch.Tensor:
    """Pass 2: the loss with eps added to the attention outputs (eps is a constant)."""
    with edit_block_outputs(model, "attention", lambda i, out: out + eps[i] if i in eps else None):
        return lm_loss(model, batch)


def vaccine_loss(model, batch, rho: float) -> torch.Tensor:
    _, grads = attention_gradients(model, batch)
    return perturbed_loss(model, batch, perturbations(grads, rho))


@register_defense("vaccine")
class Vaccine(Defense):
    stage = Stage.ALIGNMENT
    Config = VaccineConfig

    def apply(self, model, context: DefenseContext):
        step = functools.partial(vaccine_loss, rho=self.config.rho)
        return align_with(model, context, self.config, step_loss=step, desc="align (vaccine)")
