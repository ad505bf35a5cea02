"""LoRA through PEFT: attach a seeded adapter to chosen linear maps of the decoder layers, merge."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .architectures import is_conv1d
from .layers import linear_modules


def attach_lora(model: PreTrainedModel, r: int, alpha: float, *, seed: int, dropout: float = 0.0,
                targets: str = "all", layers: list[int] | None = None) -> PeftModel:
    """A fresh adapter on the `targets` linear maps ("all" | "attention" | "qkv") of the decoder
    layers (all layers, or those in `layers`). Its random init comes from `seed` alone, not from
    whatever consumed the global generator before, and leaves that generator as it was."""
    modules = linear_modules(model, targets, layers)
    _warn_unadapted_experts(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(modules),
                        fan_in_fan_out=any(is_conv1d(m) for m in modules.values()), bias="none",
                        task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def _warn_unadapted_experts(model) -> None:
    """Mixture-of-experts layers keep their routed experts as stacked 3-D weights, which a LoRA
    adapter on linear maps does not reach: say so rather than silently train a partial adapter."""
    experts = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 3 and "expert" in n)
    if experts:
        warnings.warn(f"{type(model).__name__}: LoRA adapts the linear maps only; {experts:,} parameters of routed "
                      "experts stay frozen (use mode=full to train them)", stacklevel=3)


def merge_lora(model) -> PreTrainedModel:
    """Fold the adapter into the weights and return the plain model, trainable again as if
    loaded from disk (PEFT leaves the base weights frozen, which would silently give a later
    full-parameter stage nothing to train)."""
    if not isinstance(model, PeftModel):
        return model
    return model.merge_and_unload().requires_grad_(True)


def lora_factors(model: PeftModel) -> dict[str, torch.nn.Module]:
    """The adapter's factor layers (`...lora_A.default`, `...lora_B.default`), by qualified name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and (".lora_A." in name or ".lora_B." in name)}
