"""Losses shared by defenses: multi-bandwidth Gaussian MMD, masked token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Sum of `kernels` Gaussian kernels on all pairs of rows of [x; y].

    Bandwidths: the mean pairwise squared distance, scaled by multiplier^(i - kernels // 2),
    i = 0..kernels-1 (the common DAN/MMD recipe that RepNoise's reference uses).
    """
    z = torch.cat([x, y])
    sq = torch.cdist(z, z).pow(2)
    n = z.shape[0]
    bandwidth = sq.sum() / (n * n - n)
    bandwidths = [bandwidth * multiplier ** (i - kernels // 2) for i in range(kernels)]
    return sum(torch.exp(-sq / b) for b in bandwidths)


def mmd(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Biased MMD^2 estimate between samples x (n, d) and y (m, d)."""
    k = gaussian_kernel(x, y, kernels, multiplier)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - k[:n, n:].mean() - k[n:, :n].mean()


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over positions whose label is not masked."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return F.cross_entropy(logits[:, :-1][keep], targets[keep])


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is an answer token: where answer representations live."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask
