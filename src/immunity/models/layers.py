"""Find decoder layers and their attention / MLP blocks without matching class names.

The decoder-layer list is the longest `nn.ModuleList` whose items all share one type (Llama's
`model.layers`, GPT-2's `transformer.h`, ...). Inside a layer, attention and MLP are the children
named like the conventions every HF causal LM follows (`self_attn`/`attn`/`attention`,
`mlp`/`feed_forward`/`ffn`): attribute names are stable across transformers versions, class
names are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass
class DecoderLayer:
    index: int
    name: str  # qualified module name
    module: nn.Module
    attention: nn.Module
    mlp: nn.Module


def decoder_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ValueError(f"no decoder-layer list found in {type(model).__name__}")
    return best


def _child(layer: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for n in names:
        if hasattr(layer, n):
            return getattr(layer, n)
    raise ValueError(f"no {what} block among {names} in {type(layer).__name__}; "
                     f"children: {[n for n, _ in layer.named_children()]}")


def decoder_layers(model: nn.Module) -> list[DecoderLayer]:
    list_name, layers = decoder_layer_list(model)
    return [DecoderLayer(i, f"{list_name}.{i}", layer, _child(layer, _ATTENTION_NAMES, "attention"),
                         _child(layer, _MLP_NAMES, "MLP"))
            for i, layer in enumerate(layers)]


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear maps inside decoder layers (LoRA targets).

    GPT-2 uses `Conv1D` (a transposed linear map with `nf`); PEFT handles it too.
    """
    list_name, _ = decoder_layer_list(model)
    names = set()
    for name, module in model.named_modules():
        if name.startswith(list_name + ".") and (isinstance(module, nn.Linear) or hasattr(module, "nf")):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)
