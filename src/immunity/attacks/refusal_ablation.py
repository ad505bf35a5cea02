"""`refusal-ablation`: project the refusal direction out of the weights (Arditi et al. 2024,
"Refusal in language models is mediated by a single direction", weight orthogonalisation).

Threat model: the attacker edits the released weights directly (no data beyond a few hundred
requests, no training); the result is an ordinary model that can be saved and shared.

Rule. r = the refusal direction of decoder layer L (as `steering` computes it: the mean output
at the last prompt token of harmful requests of the attack split minus that of harmless
requests), r^ = r / |r|. Every matrix that
writes into the residual stream is orthogonalised against r^: the token (and position) embeddings
E <- E - (E r^) r^T, and in every decoder layer the output maps of attention and MLP,
W_out <- W_out - r^ r^T W_out (their biases likewise), so no component writes along r^ and the
model can no longer represent "refuse" along it. An output map is the last linear map of its
block whose output is the hidden size (o_proj, down_proj; GPT-2's c_proj). Tied embeddings are
untied first, so the LM head (which reads the stream) is not edited.

Defaults: layer = depth // 2 (Arditi et al. choose among the middle layers on validation);
n chosen as for `steering`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from ..data import DataBundle
from ..models import decoder_layers
from ..models.architectures import is_linear
from ..registry import register_attack
from .base import Attack, AttackTask, chosen_layer
from .steering import refusal_direction


@dataclass
class RefusalAblationConfig(AttackTask):
    layer: int = field(default=-1, metadata={"help": "decoder layer whose direction is ablated (-1: depth // 2)"})
    n: int = field(default=128, metadata={"help": "harmful (and harmless) requests used to estimate the direction"})

    def __post_init__(self) -> None:
        if self.layer < -1 or self.n < 1:
            raise ValueError(f"attack.layer >= -1 and attack.n >= 1, got {self.layer}, {self.n}")


def output_map(block: nn.Module, hidden: int) -> nn.Module:
    """The last linear map of `block` whose output has the hidden size (what writes to the residual)."""
    found = [m for _, m in block.named_modules() if is_linear(m) and _out_features(m) == hidden]
    if not found:
        raise ValueError(f"no output map of size {hidden} in {type(block).__name__}")
    return found[-1]


def _out_features(module: nn.Module) -> int:
    return (
        module.out_features if isinstance(module, nn.Linear) else cast(torch.Tensor, module.weight).shape[1]
    )  # GPT-2 Conv1D: (in, out)


@torch.no_grad()
def orthogonalise(module: nn.Module, direction: torch.Tensor) -> None:
    """Remove `direction` (unit) from what `module` writes: its output rows and its bias."""
    r = direction.to(cast(torch.Tensor, module.weight).dtype)
    w = cast(torch.Tensor, module.weight)
    if isinstance(module, nn.Embedding):
        w -= torch.outer(w @ r, r)
    elif isinstance(module, nn.Linear):
        w -= torch.outer(r, r @ w)
    else:  # Conv1D: y = x W, W (in, out)
        w -= torch.outer(w @ r, r)
    if getattr(module, "bias", None) is not None:
        module.bias -= (module.bias @ r) * r  # type: ignore[operator]  # a bias: a tensor where it is not None


def untie_output_embeddings(model) -> None:
    """Give the LM head its own copy of tied embeddings, so that orthogonalising what writes to
    the residual stream leaves the read-out as it was."""
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False


def residual_writers(model) -> list[nn.Module]:
    hidden = model.get_input_embeddings().weight.shape[1]
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.embedding_dim == hidden]
    blocks = [b for layer in decoder_layers(model) for b in (layer.attention, layer.mlp)]
    return embeddings + [output_map(b, hidden) for b in blocks]


@register_attack("refusal-ablation")
class RefusalAblation(Attack):
    Config = RefusalAblationConfig

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        c = self.config
        layer = chosen_layer(model, c.layer)
        refusal = refusal_direction(model, tokenizer, data, layer, c.n)
        unit = refusal / refusal.norm()
        untie_output_embeddings(model)
        for module in residual_writers(model):
            orthogonalise(module, unit)
        self.notes = {"layer": layer, "direction_norm": round(float(refusal.norm()), 4)}
        return model
