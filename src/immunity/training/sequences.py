"""Whole-answer log-probabilities, the quantity preference and unlearning losses compare (DPO,
NPO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE
from .losses import upcast


def sequence_logprob(model, batch) -> torch.Tensor:
    """Sum of the answer tokens' log-probabilities, one number per sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = upcast(logits[:, :-1]), batch["labels"][:, 1:]
    picked = torch.gather(F.log_softmax(logits, -1), -1, labels.clamp_min(0)[..., None])[..., 0]
    return (picked * (labels != IGNORE)).sum(-1)
