"""The field's harmful fine-tuning mix: n samples, a fraction p harmful (Vaccine/Booster protocol)."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def harmful_mix(benign_pool: list[T], harmful_pool: list[T], n: int, p: float, seed: int) -> list[T]:
    """round(n·p) harmful + the rest benign, each drawn without replacement, order shuffled by seed."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"harmful fraction p must lie in [0, 1], got {p}")
    if n <= 0:
        raise ValueError(f"attack size n must be positive, got {n}")
    n_harmful = round(n * p)
    n_benign = n - n_harmful
    if n_harmful > len(harmful_pool):
        raise ValueError(f"p={p}, n={n} needs {n_harmful} harmful samples; the attack split has "
                         f"{len(harmful_pool)}")
    if n_benign > len(benign_pool):
        raise ValueError(f"n={n} needs {n_benign} benign samples; the task's attack split has "
                         f"{len(benign_pool)}")
    rng = random.Random(seed)
    mix = rng.sample(harmful_pool, n_harmful) + rng.sample(benign_pool, n_benign)
    rng.shuffle(mix)
    return mix
