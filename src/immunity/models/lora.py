"""LoRA through PEFT: attach a seeded adapter to chosen linear maps of the decoder layers, merge."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .architectures import is_conv1d
from .layers import linear_modules


def attach_lora(
    model: PreTrainedModel,
    r: int,
    alpha: float,
    *,
    seed: int,
    dropout: float = 0.0,
    targets: str = "all",
    layers: list[int] | None = None,
) -> PeftModel:
    """A fresh adapter on the `targets` linear maps ("all" | "attention" | "qkv") of the decoder
    layers (all layers, or those in `layers`). Its random init comes from `seed` alone, not from
    whatever consumed the global generator before, and leaves that generator as it was."""
    modules = linear_modules(model, targets, layers)
    _warn_unadapted_experts(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; its scaling alpha / r takes a float
        lora_dropout=dropout,
        target_modules=sorted(modules),
        fan_in_fan_out=any(is_conv1d(m) for m in modules.values()),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def _warn_unadapted_experts(model) -> None:
    """Mixture-of-experts layers keep their routed experts as stacked 3-D weights, which a LoRA
    adapter on linear maps does not reach: say so rather than silently train a partial adapter."""
    experts = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 3 and "expert" in n)
    if experts:
        warnings.warn(
            f"{type(model).__name__}: LoRA adapts the linear maps only; {experts:,} parameters of routed "
            "experts stay frozen (use mode=full to train them)",
            stacklevel=3,
        )


def merge_lora(model) -> PreTrainedModel:
    """Fold the adapter into the weights and return the plain model, trainable again as if
    loaded from disk (PEFT leaves the base weights frozen, which would silently give a later
    full-parameter stage nothing to train)."""
    if not isinstance(model, PeftModel):
        return model
    return model.merge_and_unload().requires_grad_(True)


def lora_factors(model: PeftModel) -> dict[str, torch.nn.Module]:
    """The adapter's factor layers (`...lora_A.default`, `...lora_B.default`), by qualified name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (".lora_A." in name or ".lora_B." in name)
    }


@dataclass
class ReleasedAdapter:
    """A trained adapter kept apart from the merged model it was folded into: its PEFT config
    and weights (what an attacker who keeps training it starts from)."""

    config: dict
    weights: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: PeftModel) -> ReleasedAdapter:
        config = model.peft_config["default"].to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        return cls(config, {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()})

    def save(self, directory: Path) -> None:
        save_file(self.weights, str(directory / "released_adapter.safetensors"))
        (directory / "released_adapter.json").write_text(json.dumps(self.config, default=str))

    @classmethod
    def load(cls, directory: Path) -> ReleasedAdapter | None:
        if not (directory / "released_adapter.json").is_file():
            return None
        return cls(
            json.loads((directory / "released_adapter.json").read_text()),
            load_file(str(directory / "released_adapter.safetensors")),
        )


def continue_adapter(merged: PreTrainedModel, adapter: ReleasedAdapter) -> PeftModel:
    """The released adapter, trainable again, on the weights it was merged into: each adapted
    weight becomes W - s·B·A and the adapter (B, A) is restored, so the model computes exactly
    what the released (merged) model did, and training moves the adapter, as if never merged."""
    config = LoraConfig(
        **{
            k: v
            for k, v in adapter.config.items()
            if k in LoraConfig.__dataclass_fields__ and k not in ("peft_type", "revision")
        }
    )
    model = get_peft_model(merged, config)
    set_peft_model_state_dict(model, {k: v.to(next(merged.parameters()).device) for k, v in adapter.weights.items()})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                cast(Any, module).get_base_layer().weight -= (
                    cast(Any, module).get_delta_weight("default").to(cast(Any, module).get_base_layer().weight.dtype)
                )
    return model
