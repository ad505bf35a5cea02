"""Representation interventions: LoReFT (Wu et al. 2024), Phi(h) = h + R^T (W h + b - R h) with
orthonormal rows of R, attached to a decoder layer's output by a forward hook, and its training
on a frozen model (the `reft` attack; E.T.'s simulated attacker)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ..data import encode_chat
from ..models import block_output, decoder_layers, with_block_output
from .loop import AroundFrozen, TrainConfig, train


class LoReFT(nn.Module):
    """Phi(h) = h + R^T (W h + b - R h) with orthonormal rows of R."""

    def __init__(self, hidden: int, rank: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.rotate = parametrizations.orthogonal(nn.Linear(hidden, rank, bias=False))
        self.learned = nn.Linear(hidden, rank)
        with torch.no_grad():
            self.learned.weight.copy_(torch.randn(rank, hidden, generator=generator) / hidden**0.5)
            self.learned.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.to(self.learned.weight.dtype)
        edit = (self.learned(x) - self.rotate(x)) @ self.rotate.weight
        return h + edit.to(h.dtype)


def intervene(model, layer: int, intervention: nn.Module):
    """Apply `intervention` to layer `layer`'s output (a forward hook); returns its handle."""

    def hook(_module, _args, output):
        return with_block_output(output, intervention(block_output(output)))

    return decoder_layers(model)[layer].module.register_forward_hook(hook)


def train_reft(
    model,
    tokenizer,
    pairs,
    layer: int,
    rank: int,
    lr: float,
    epochs: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
):
    """Fit a LoReFT intervention at `layer` of the frozen `model` on (request, answer) `pairs`
    (AdamW, answer tokens only); returns (intervention, hook handle): the hook stays attached."""
    model.requires_grad_(False)
    hidden = model.get_input_embeddings().weight.shape[1]
    device = next(model.parameters()).device
    intervention = LoReFT(hidden, rank, seed).to(device)
    handle = intervene(model, layer, intervention)
    features = [encode_chat(tokenizer, e.prompt, e.answer) for e in pairs]
    train(
        AroundFrozen(model, intervention),
        features,
        TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed),
        tokenizer.pad_token_id,
        step_loss=lambda m, batch: m.loss(batch),
        desc="reft",
        progress=progress,
    )
    intervention.requires_grad_(False)
    return intervention, handle
