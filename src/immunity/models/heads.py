"""The final norm and output head, found generically (for the logit lens)."""

from __future__ import annotations

from torch import nn

from .architectures import FINAL_NORM_NAMES


def final_norm(model) -> nn.Module:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    for name in FINAL_NORM_NAMES:
        if isinstance(getattr(base, name, None), nn.Module):
            return getattr(base, name)
    raise ValueError(f"no final norm among {FINAL_NORM_NAMES} on {type(base).__name__}")


def logit_lens(model, hidden):
    """Vocabulary logits read off an intermediate hidden state: head(final_norm(h))."""
    return model.get_output_embeddings()(final_norm(model)(hidden))
