"""Find decoder layers, their attention / MLP blocks and their linear maps.

The architecture table (`architectures.py`) is consulted first. For a model type outside it, the
decoder-layer list is the longest `nn.ModuleList` of one module type whose items have an
attention child (an MoE layer's expert list has none, so it is never picked); inside a layer,
attention and MLP are the children named by the conventions HF causal LMs follow. Attribute
names are stable across transformers versions, class names are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from .architectures import ATTENTION_NAMES, MLP_NAMES, QKV_NAMES, architecture, is_linear


@dataclass
class DecoderLayer:
    index: int
    name: str  # qualified module name in the model it was found in
    module: nn.Module
    attention: nn.Module
    mlp: nn.Module


def block_output(output):
    """The hidden states a decoder layer or block returns: a tensor, or the first item of the
    tuple some architectures return (with attention weights or caches after it)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_output(output, hidden):
    """`output` with its hidden states replaced by `hidden` (what a forward hook returns)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (whose config names the architecture)."""
    return cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _has_child(module: nn.Module, names: tuple[str, ...]) -> bool:
    return any(isinstance(getattr(module, n, None), nn.Module) for n in names)


def decoder_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name in `model`, the ModuleList of decoder layers)."""
    arch = architecture(_unwrapped(model))
    if arch is not None:
        layers = cast(nn.ModuleList, _unwrapped(model).get_submodule(arch.layers))
        return _name_of(model, layers), layers
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(m) for m in module}) == 1
        and _has_child(module[0], ATTENTION_NAMES)
    ]
    if not candidates:
        raise ValueError(
            f"no decoder-layer list found in {type(model).__name__}: no list of layers with an "
            f"attention block among {ATTENTION_NAMES}; add its model_type to "
            "immunity.models.architectures.BY_MODEL_TYPE"
        )
    longest = max(len(m) for _, m in candidates)
    best = [c for c in candidates if len(c[1]) == longest]
    if len(best) > 1:
        raise ValueError(
            f"ambiguous decoder-layer lists in {type(model).__name__}: {[n for n, _ in best]}; "
            "add its model_type to immunity.models.architectures.BY_MODEL_TYPE"
        )
    return best[0]


def _child(layer: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for n in names:
        if isinstance(getattr(layer, n, None), nn.Module):
            return getattr(layer, n)
    raise ValueError(
        f"no {what} block among {names} in {type(layer).__name__}; children: {[n for n, _ in layer.named_children()]}"
    )


def decoder_layers(model: nn.Module) -> list[DecoderLayer]:
    list_name, layers = decoder_layer_list(model)
    arch = architecture(_unwrapped(model))
    attention = (arch.attention,) if arch else ATTENTION_NAMES
    mlp = (arch.mlp,) if arch else MLP_NAMES
    return [
        DecoderLayer(i, f"{list_name}.{i}", layer, _child(layer, attention, "attention"), _child(layer, mlp, "MLP"))
        for i, layer in enumerate(layers)
    ]


LORA_TARGETS = ("all", "qkv", "attention")


def linear_modules(model: nn.Module, kind: str = "all", layers: list[int] | None = None) -> dict[str, nn.Module]:
    """Linear maps (GPT-2's Conv1D included) inside decoder layers, by qualified name.

    kind: "all" (every linear map of the layer), "attention" (those inside the attention block)
    or "qkv" (the attention input projections); `layers` restricts to those layer indices.
    """
    if kind not in LORA_TARGETS:
        raise ValueError(f"unknown linear-map kind {kind!r}; choose one of {LORA_TARGETS}")
    arch = architecture(_unwrapped(model))
    qkv = arch.qkv if arch else QKV_NAMES
    found = {}
    for layer in decoder_layers(model):
        if layers is not None and layer.index not in layers:
            continue
        scope = layer.module if kind == "all" else layer.attention
        prefix = layer.name if kind == "all" else _name_of(model, layer.attention)
        for name, module in scope.named_modules():
            if is_linear(module) and "lora_" not in name and not name.endswith("base_layer"):
                if kind != "qkv" or name.rsplit(".", 1)[-1] in qkv:
                    found[f"{prefix}.{name}"] = module
    if not found:
        raise ValueError(f"no {kind!r} linear maps found in {type(_unwrapped(model)).__name__}")
    return found
