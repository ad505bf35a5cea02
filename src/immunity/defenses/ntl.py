"""`ntl`: non-transferable learning (Wang et al., "Non-Transferable Learning", ICLR 2022).

Stage: alignment. Source domain = the alignment data (refusals + helpful benign answers),
target domain = the defender's harmful compliance data. Single-level: no simulated attacker.

Loss (reference code `ntl_*.py`, each factor clamped at 1):
    L = L_src - min(alpha * L_tgt, 1) * min(beta * MMD(f_src, f_tgt), 1)
L_src, L_tgt: answer-token cross-entropy on a source / target batch; f: the hidden state after
decoder layer `feature_layer` (default: the middle one, as the reference takes VGG
`features[:10]`), averaged over each example's answer positions -> one vector per example;
MMD: Gaussian kernels, 5 bandwidths, multiplier 2 (the reference's). The paper writes
L_S - min(beta, alpha * L_T * L_dis); we follow the code, which produced the published numbers.
The clamps bound the ascent: once the harmful CE reaches 1/alpha nats (10) and the features are
far enough apart, the penalty is flat and only L_src trains.

Defaults: alpha = beta = 0.1 (hard-coded in the reference). The reference trains with Adam 1e-4
for 30-100 epochs on image classifiers; here the training settings equal `sft`'s.
Adaptation to LMs: cross-entropy on answer tokens instead of KL to one-hot labels; per-example
mean-pooled hidden states instead of flattened conv maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_defense
from ..training.losses import answer_mask, mmd, token_ce, upcast
from .base import AlignmentTraining, DefenseContext, Stage, align_with


@dataclass
class NTLConfig(AlignmentTraining):
    alpha: float = field(default=0.1, metadata={"help": "scale of the target CE before its clamp at 1 (reference 0.1)"})
    beta: float = field(default=0.1, metadata={"help": "scale of the MMD before its clamp at 1 (reference 0.1)"})
    feature_layer: int = field(default=-1, metadata={"help": "decoder layer whose output is the feature; -1 = middle"})


def answer_features(model, batch: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer-token CE, per-example mean hidden state after decoder layer `layer`)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden = out.hidden_states[layer + 1]  # hidden_states[0] is the embedding output
    mask = answer_mask(batch["labels"]).to(hidden.dtype)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return token_ce(upcast(out.logits), batch["labels"]), pooled


def ntl_loss(model, source: dict, target: dict, alpha: float, beta: float, layer: int):
    """(L, {"src", "tgt", "mmd"}) with the reference's clamped product."""
    loss_src, f_src = answer_features(model, source, layer)
    loss_tgt, f_tgt = answer_features(model, target, layer)
    distance = mmd(f_src, f_tgt)
    penalty = torch.clamp(alpha * loss_tgt, max=1.0) * torch.clamp(beta * distance, max=1.0)
    return loss_src - penalty, {"src": loss_src.item(), "tgt": loss_tgt.item(), "mmd": distance.item()}


@register_defense("ntl")
class NTL:
    stage = Stage.ALIGNMENT
    Config = NTLConfig

    def __init__(self, config: NTLConfig):
        self.config = config
        self.harmful = None
        self.layer = 0

    def step_loss(self, model, batch):
        loss, parts = ntl_loss(model, batch, next(self.harmful), self.config.alpha, self.config.beta, self.layer)
        return loss, parts["src"]

    def apply(self, model, context: DefenseContext):
        depth = model.config.num_hidden_layers
        self.layer = depth // 2 - 1 if self.config.feature_layer < 0 else self.config.feature_layer
        if not 0 <= self.layer < depth:
            raise ValueError(f"ntl feature_layer {self.config.feature_layer} outside 0..{depth - 1}")
        device = next(model.parameters()).device
        self.harmful = context.batch_stream(context.harmful_compliance_examples(), self.config.batch_size, device)
        return align_with(model, context, self.config, step_loss=self.step_loss, desc="align (ntl)")
