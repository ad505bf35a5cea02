"""`antidote`: post-fine-tuning safety recovery by pruning (Huang et al., "Antidote", ICML 2025).

Stage: post-fine-tuning: it repairs the attacked model. Data: a harmful calibration set (the
defender's harmful requests answered compliantly).

Rule (Wanda scores on harmful data). For every fine-tuned linear map W (out x in) with input
activations X over the calibration tokens:
    S_ij = |W_ij| * ||X_j||_2
and in every output row i the top `ratio` share of the S_ij are set to zero: the weights most
important for harmful behaviour are removed. One forward pass, no backward.

Defaults: ratio 0.05 (issue setting; the reference scripts use 0.1 on SST2, 0.05 on GSM8K,
0.01 in the rebuttal); 256 calibration examples (the reference uses 2000 BeaverTails pairs).
"Fine-tuned weights" are the linear maps of the decoder layers, the attack's LoRA targets
(merged into them); embeddings, norms and the output head are never pruned. The reference
accumulates norms over every token of a batch-1 pass; we use the non-padding tokens of padded
batches, which is the same set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.layers import decoder_layer_list, linear_module_names
from ..registry import register_defense
from ..training import batches
from .base import DefenseContext, Stage


@dataclass
class AntidoteConfig:
    ratio: float = field(default=0.05, metadata={"help": "share of each output row pruned (reference 0.01-0.1)"})
    calibration: int = field(default=256, metadata={"help": "harmful calibration examples"})
    batch_size: int = field(default=32, metadata={"help": "calibration batch size"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"antidote ratio must lie in [0, 1), got {self.ratio}")


def fine_tuned_linears(model) -> dict[str, nn.Module]:
    """The decoder layers' linear maps (GPT-2's Conv1D included), by qualified name."""
    list_name, _ = decoder_layer_list(model)
    leaves = set(linear_module_names(model))
    return {n: m for n, m in model.named_modules()
            if n.startswith(list_name + ".") and n.rsplit(".", 1)[-1] in leaves}


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """(out, in) view of the weight; Conv1D stores (in, out)."""
    return module.weight.T if hasattr(module, "nf") else module.weight


@torch.no_grad()
def input_norms(model, modules: dict[str, nn.Module], calibration: list[dict]) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all non-padding calibration tokens, per input feature of each module."""
    sums = {n: 0.0 for n in modules}
    current_mask = {}

    def make_hook(name):
        def hook(module, args, output):
            x = args[0][current_mask["m"]]  # (tokens, in)
            sums[name] = sums[name] + x.double().pow(2).sum(dim=0)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        for batch in calibration:
            current_mask["m"] = batch["attention_mask"].bool()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return {n: s.sqrt() for n, s in sums.items()}


@torch.no_grad()
def wanda_prune(weight: torch.Tensor, norms: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero, in place, the top `ratio` of |W_ij| * ||X_j|| in each row; return the pruned mask."""
    scores = weight.abs().double() * norms.to(weight.device)[None, :]
    k = int(ratio * weight.shape[1])
    mask = torch.zeros_like(weight, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
        weight.masked_fill_(mask, 0.0)
    return mask


@register_defense("antidote")
class Antidote:
    stage = Stage.POST_FINE_TUNING
    Config = AntidoteConfig

    def __init__(self, config: AntidoteConfig):
        self.config = config

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        examples = context.harmful_compliance_examples()[: c.calibration]
        calibration = [{k: v.to(device) for k, v in b.items()}
                       for b in batches(context.encode(examples), c.batch_size, context.tokenizer.pad_token_id,
                                        context.seed, shuffle=False)]
        modules = fine_tuned_linears(model)
        norms = input_norms(model.eval(), modules, calibration)
        for name, module in modules.items():
            wanda_prune(weight_matrix(module).data, norms[name], c.ratio)
        return model
