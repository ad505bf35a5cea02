"""LoRA through PEFT: attach a fresh adapter to every linear map of the decoder layers, merge."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .layers import linear_module_names


def attach_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float = 0.0,
                targets: list[str] | None = None) -> PeftModel:
    names = targets or linear_module_names(model)
    is_conv1d = model.config.model_type == "gpt2"  # GPT-2 stores linear maps transposed
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                        fan_in_fan_out=is_conv1d, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model) -> PreTrainedModel:
    """Fold the adapter into the weights and return the plain model, trainable again as if
    loaded from disk (PEFT leaves the base weights frozen, which would silently give a later
    full-parameter stage nothing to train)."""
    if not isinstance(model, PeftModel):
        return model
    return model.merge_and_unload().requires_grad_(True)
