"""`ntl`: non-transferable learning (Wang et al., "Non-Transferable Learning", ICLR 2022).

Stage: alignment. Source domain = the alignment data (refusals + helpful benign answers),
target domain = the defender's harmful compliance data. Single-level: no simulated attacker.

Loss (reference `src/ntl/ntl_cifar_stl.py:284-302`; the digit and VisDA files are the same):
    L_ref = KL_src - min(alpha * KL_tgt, 1) * min(beta * MMD(f_src, f_tgt), 1)
where KL = `nn.KLDivLoss()` of log-softmax outputs against one-hot labels. KLDivLoss averages
over batch *and* classes, so on one-hot targets it is CE / C (C classes). For an LM every
answer token is a C = |V|-way classification, so KL = CE / C with CE the answer-token cross-
entropy. We optimise C * L_ref, which has the same minimiser and Adam steps but losses in nats:
    L = CE_src - min(alpha * CE_tgt, C) * min(beta * MMD, 1)
The harmful CE therefore saturates at C / alpha nats, not 1 / alpha (10x off at C = 10, far
more at C = |V|): in practice the target term keeps its gradient. `classes` sets C (0 = the
vocabulary size; 10 = the reference's class count).
f: the hidden state after decoder layer `feature_layer` (default: the middle one, as the
reference takes VGG `features[:10]`), averaged over each example's answer positions -> one
vector per example (the reference flattens conv maps). MMD: Gaussian kernels, 5 bandwidths,
multiplier 2, bandwidth from detached distances (`ntl_cifar_stl.py:51-82`). The paper writes
L_S - min(beta, alpha * L_T * L_dis); we follow the code, which produced the published numbers.

Defaults: alpha = beta = 0.1 (hard-coded in the reference, `ntl_cifar_stl.py:291-292`). The
reference trains with Adam 1e-4 for 30-100 epochs on image classifiers; here the training
settings equal `sft`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_defense
from ..training.losses import answer_mask, mmd, token_ce
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class NTLConfig(AlignmentTraining):
    alpha: float = field(default=0.1, metadata={"help": "scale of the target KL before its clamp at 1 (reference 0.1)"})
    beta: float = field(default=0.1, metadata={"help": "scale of the MMD before its clamp at 1 (reference 0.1)"})
    classes: int = field(default=0, metadata={"help": "C of KL = CE / C; 0 = vocabulary size"})
    feature_layer: int = field(default=-1, metadata={"help": "decoder layer whose output is the feature; -1 = middle"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classes < 0:
            raise ValueError(f"ntl classes must be >= 0, got {self.classes}")


def answer_features(model, batch: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer-token CE, per-example mean hidden state after decoder layer `layer`)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden = out.hidden_states[layer + 1]  # hidden_states[0] is the embedding output
    mask = answer_mask(batch["labels"]).to(hidden.dtype)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return token_ce(out.logits, batch["labels"]), pooled


def ntl_loss(model, source: dict, target: dict, alpha: float, beta: float, layer: int, classes: int):
    """(C * L_ref in nats, {"src", "tgt", "mmd"}) with the reference's clamped product."""
    loss_src, f_src = answer_features(model, source, layer)
    loss_tgt, f_tgt = answer_features(model, target, layer)
    distance = mmd(f_src, f_tgt)
    penalty = torch.clamp(alpha * loss_tgt, max=float(classes)) * torch.clamp(beta * distance, max=1.0)
    return loss_src - penalty, {"src": loss_src.item(), "tgt": loss_tgt.item(), "mmd": distance.item()}


@register_defense("ntl")
class NTL(Defense):
    stage = Stage.ALIGNMENT
    Config = NTLConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        depth = model.config.num_hidden_layers
        layer = depth // 2 - 1 if c.feature_layer < 0 else c.feature_layer
        if not 0 <= layer < depth:
            raise ValueError(f"ntl feature_layer {c.feature_layer} outside 0..{depth - 1}")
        classes = c.classes or model.config.vocab_size
        harmful = context.batch_stream(
            context.harmful_compliance_examples(), c.batch_size, next(model.parameters()).device
        )

        def step(model, batch):
            loss, parts = ntl_loss(model, batch, next(harmful), c.alpha, c.beta, layer, classes)
            return loss, parts["src"]

        return align_with(model, context, c, step_loss=step, desc="align (ntl)")
