"""`antidote`: post-fine-tuning safety recovery by pruning (Huang et al., "Antidote", ICML 2025).

Stage: post-fine-tuning: it repairs the attacked model. Data: a harmful calibration set (the
defender's harmful requests answered compliantly).

What is pruned (reference git-disl/Antidote, `utils.py` `find_layers` and `prune_wanda_outlier`,
`train.py:497-535`): after a LoRA attack, the factor layers of the *user's fine-tuning adapter*
(every `nn.Linear` whose name contains "lora": lora_A and lora_B of each adapted map); the
merged alignment weights and the pretrained weights are never touched, so at worst Antidote
removes the fine-tuning update. After full-parameter fine-tuning: the attention input
projections (q/k/v) of every layer. The pruned adapter is merged afterwards.

Rule (Wanda scores on harmful data). For each pruned layer W (out x in) with inputs X over the
calibration tokens (for lora_B: the rank-r output of lora_A):
    S_ij = |W_ij| * ||X_j||_2
In every output row the entries outside the lowest floor(in * (1 - ratio)) scores (stable
ascending sort) are zeroed: the weights most important for harmful behaviour are removed.
That count, in - floor(in * (1 - ratio)), is the reference's, and prunes at least one entry of a
rank-8 lora_B row even at small ratios. The reference keeps a running mean of ||X_j||^2 per
sample; a per-column constant does not change any row's ranking, so plain sums are used.

Defaults: ratio 0.05, the reference's GSM8K setting, chosen on the validation split (its SST2
setting 0.1, `script/finetune/antidote_poison_ratio.sh:16`, costs fine-tune accuracy here: FA
75 % against 92 % at 0.05; 0.01 is the rebuttal's); 256 calibration examples (the
reference uses 2000 BeaverTails pairs, `bad_sample_num=2000`). The reference passes one sample
at a time; we use the non-padding tokens of padded batches, the same token set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from peft import PeftModel
from torch import nn

from ..models import linear_modules, lora_factors, merge_lora
from ..models.architectures import is_conv1d
from ..registry import register_defense
from .base import Defense, DefenseContext, Stage


@dataclass
class AntidoteConfig:
    ratio: float = field(
        default=0.05,
        metadata={
            "help": "share of each output row pruned (reference: 0.1 SST2, 0.05 GSM8K; 0.05 chosen on validation)"
        },
    )
    calibration: int = field(default=256, metadata={"help": "harmful calibration examples (reference 2000)"})
    batch_size: int = field(default=32, metadata={"help": "calibration batch size"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"antidote ratio must lie in [0, 1), got {self.ratio}")
        if self.calibration < 1 or self.batch_size < 1:
            raise ValueError("antidote calibration and batch_size must be positive")


def pruned_layers(model) -> dict[str, nn.Module]:
    """The user's adapter factors after a LoRA attack; q/k/v after full fine-tuning."""
    if isinstance(model, PeftModel):
        return lora_factors(model)
    return linear_modules(model, "qkv")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """(out, in) view of the weight; Conv1D stores (in, out)."""
    return cast(torch.Tensor, module.weight).T if is_conv1d(module) else cast(torch.Tensor, module.weight)


@torch.no_grad()
def input_norms(model, modules: dict[str, nn.Module], calibration: list[dict]) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all non-padding calibration tokens, per input feature of each module."""
    sums = cast(dict[str, torch.Tensor], {n: 0.0 for n in modules})
    current_mask = cast(dict[str, torch.Tensor], {})

    def make_hook(name):
        def hook(module, args, output):
            mask = current_mask["m"]
            x = args[0][mask if args[0].dim() == 3 else mask.flatten()]  # (tokens, in); OPT/MoE pass flat tokens
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
    """Zero, in place, all but the lowest floor(in * (1 - ratio)) Wanda scores of each row;
    return the mask of pruned entries."""
    scores = weight.abs().double() * norms.to(weight.device)[None, :]
    kept_low = int(weight.shape[1] * (1 - ratio))
    order = torch.sort(scores, dim=1, stable=True).indices
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask.scatter_(1, order[:, :kept_low], False)
    weight.masked_fill_(mask, 0.0)
    return mask


@register_defense("antidote")
class Antidote(Defense):
    stage = Stage.POST_FINE_TUNING
    Config = AntidoteConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        calibration = context.fixed_batches(
            context.harmful_compliance_examples()[: c.calibration], c.batch_size, device
        )
        target = "adapter factors" if isinstance(model, PeftModel) else "q/k/v"
        modules = pruned_layers(model)
        norms = input_norms(model.eval(), modules, calibration)
        pruned = sum(int(wanda_prune(weight_matrix(m).data, norms[n], c.ratio).sum()) for n, m in modules.items())
        model = merge_lora(model)
        context.note(pruned=target, pruned_weights=pruned)
        return model
