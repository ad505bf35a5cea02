"""Forward hooks on the blocks found by layer discovery, removed on exit (always).

Attention and MLP modules return a tensor or a tuple whose first item is the block's output;
`edit_block_outputs` lets a function read or replace that first item, whatever the model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from ..models import block_output, decoder_layers, with_block_output


@contextmanager
def edit_block_outputs(
    model, block: str, fn: Callable[[int, torch.Tensor], torch.Tensor | None], layers: list[int] | None = None
):
    """Call fn(layer_index, output) on each chosen layer's `block` ("attention" | "mlp");
    a returned tensor replaces the output."""
    handles = []

    def make_hook(index: int):
        def hook(module, args, output):
            new = fn(index, block_output(output))
            return None if new is None else with_block_output(output, new)

        return hook

    try:
        for layer in decoder_layers(model):
            if layers is None or layer.index in layers:
                handles.append(getattr(layer, block).register_forward_hook(make_hook(layer.index)))
        yield
    finally:
        for h in handles:
            h.remove()
