"""Losses shared by defenses: the shift-and-mask rule of next-token losses, masked token
cross-entropy, and the multi-bandwidth Gaussian MMD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: float64 stays float64 (mechanics tests), anything else goes to float32
    (half-precision logits are upcast, as transformers does)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is an answer token: the positions that predict the answer."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(upcast logits at the positions that predict answer tokens, those answer tokens): the one
    shift-and-mask rule every next-token loss uses. `logits` may be (B, T, V) or already
    restricted to `answer_mask(labels)` positions, (N, V)."""
    targets = labels[:, 1:][labels[:, 1:] != IGNORE]
    if logits.dim() == 3:
        logits = logits[answer_mask(labels)]
    return upcast(logits), targets


def token_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over answer tokens (prompt and padding labels are IGNORE)."""
    return F.cross_entropy(*shifted(logits, labels), reduction=reduction)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Sum of `kernels` Gaussian kernels on all pairs of rows of [x; y].

    Bandwidths: the mean pairwise squared distance, scaled by multiplier^(i - kernels // 2),
    i = 0..kernels-1, computed from *detached* distances as both references do
    (`L2_distance.data`, RepNoise `loss.py` and NTL `ntl_*.py`): the bandwidth is a
    normaliser, not something to optimise. Computed from the widest kernel F alone, since the
    others are its powers F^(multiplier^j): with multiplier 2, repeated squaring replaces the
    other exponentials.
    """
    z = torch.cat([x, y])
    norms = z.pow(2).sum(1)
    sq = (norms[:, None] + norms[None, :] - 2 * z @ z.T).clamp(min=0)  # no sqrt, unlike cdist
    n = z.shape[0]
    bandwidth = sq.detach().sum() / (n * n - n)
    widest = torch.exp(-sq / (bandwidth * multiplier ** (kernels - 1 - kernels // 2)))
    total, power = widest, widest
    for j in range(1, kernels):
        power = power * power if multiplier == 2 else widest ** (multiplier**j)
        total = total + power
    return total


def mmd(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, multiplier: float = 2.0) -> torch.Tensor:
    """Biased MMD^2 estimate between samples x (n, d) and y (m, d): w^T K w with w = 1/n on x's
    rows and -1/m on y's (the four block means in one quadratic form)."""
    k = gaussian_kernel(x, y, kernels, multiplier)
    n, m = x.shape[0], y.shape[0]
    w = torch.cat([torch.full((n,), 1.0 / n, dtype=k.dtype), torch.full((m,), -1.0 / m, dtype=k.dtype)]).to(k.device)
    return w @ k @ w
