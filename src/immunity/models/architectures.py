"""What the code needs to know about model architectures, in one place.

A table keyed by `config.model_type` names the decoder-layer list and, inside a layer, the
attention and MLP blocks (the modules whose outputs the representation defenses hook) and the
attention input projections (q/k/v, the reference adapters of Booster and Antidote). Model types
not in the table fall back to a structural heuristic in `layers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import nn


@dataclass(frozen=True)
class Architecture:
    layers: str  # qualified name of the decoder-layer ModuleList
    attention: str  # attribute of a decoder layer
    mlp: str  # attribute of a decoder layer whose output is the MLP block's output
    qkv: tuple[str, ...]  # leaf names of the attention input projections


_LLAMA_LIKE = Architecture("model.layers", "self_attn", "mlp", ("q_proj", "k_proj", "v_proj"))

BY_MODEL_TYPE: dict[str, Architecture] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")},
    "phi3": Architecture("model.layers", "self_attn", "mlp", ("qkv_proj",)),
    "gpt2": Architecture("transformer.h", "attn", "mlp", ("c_attn",)),
    "gpt_neox": Architecture("gpt_neox.layers", "attention", "mlp", ("query_key_value",)),
    # OPT's MLP is fc1 -> activation -> fc2 on the layer itself: fc2's output is the block's output.
    "opt": Architecture("model.decoder.layers", "self_attn", "fc2", ("q_proj", "k_proj", "v_proj")),
}

# The heuristic's conventions for model types outside the table.
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
QKV_NAMES = ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj", "Wqkv")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm")  # on the decoder (logit lens)


def architecture(model: nn.Module) -> Architecture | None:
    config = getattr(model, "config", None)
    return BY_MODEL_TYPE.get(cast(str, getattr(config, "model_type", None)))


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's `Conv1D` stores a linear map transposed, (in, out), and has `nf` (out features)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)
