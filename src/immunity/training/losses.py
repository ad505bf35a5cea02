"""Losses shared by defenses: multi-bandwidth Gaussian MMD, masked token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Sum of `kernels` Gaussian kernels on all pairs of rows of [x; y].

    Bandwidths: the mean pairwise squared distance, scaled by multiplier^(i - kernels // 2),
    i = 0..kernels-1 (the common DAN/MMD recipe that RepNoise's reference uses).
    Computed from the widest kernel F alone, since the others are its powers F^(multiplier^j):
    with the usual multiplier 2, repeated squaring replaces the other exponentials.
    """
    z = torch.cat([x, y])
    norms = z.pow(2).sum(1)
    sq = (norms[:, None] + norms[None, :] - 2 * z @ z.T).clamp(min=0)  # no sqrt, unlike cdist
    n = z.shape[0]
    bandwidth = sq.sum() / (n * n - n)
    widest = torch.exp(-sq / (bandwidth * multiplier ** (kernels - 1 - kernels // 2)))
    total, power = widest, widest
    for j in range(1, kernels):
        power = power * power if multiplier == 2 else widest ** (multiplier ** j)
        total = total + power
    return total


def mmd(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Biased MMD^2 estimate between samples x (n, d) and y (m, d): w^T K w with w = 1/n on x's
    rows and -1/m on y's (the four block means in one quadratic form)."""
    k = gaussian_kernel(x, y, kernels, multiplier)
    n, m = x.shape[0], y.shape[0]
    w = torch.cat([torch.full((n,), 1.0 / n, dtype=k.dtype), torch.full((m,), -1.0 / m, dtype=k.dtype)]).to(k.device)
    return w @ k @ w


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: float64 stays float64 (mechanics tests), anything else goes to float32
    (half-precision logits are upcast, as transformers does)."""
    return logits if logits.dtype == torch.float64 else logits.float()


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
