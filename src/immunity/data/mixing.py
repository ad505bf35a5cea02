"""The field's harmful fine-tuning mix: n samples, a fraction p harmful (Vaccine/Booster protocol)."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def check_mix(benign_available: int, harmful_available: int, n: int, p: float) -> tuple[int, int]:
    """(harmful, benign) counts of the mix, or a ValueError if the pools cannot supply them
    (checked when the config is read, before any training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"harmful fraction p must lie in [0, 1], got {p}")
    if n <= 0:
        raise ValueError(f"attack size n must be positive, got {n}")
    n_harmful = round(n * p)
    n_benign = n - n_harmful
    if n_harmful > harmful_available:
        raise ValueError(
            f"attack.p={p:g}, attack.n={n} needs {n_harmful} harmful samples; the attack split has {harmful_available}"
        )
    if n_benign > benign_available:
        raise ValueError(
            f"attack.n={n} needs {n_benign} benign samples; the task's attack split has {benign_available}"
        )
    return n_harmful, n_benign


def harmful_mix(benign_pool: list[T], harmful_pool: list[T], n: int, p: float, seed: int) -> list[T]:
    """round(n·p) harmful + the rest benign, each drawn without replacement, order shuffled by seed."""
    n_harmful, n_benign = check_mix(len(benign_pool), len(harmful_pool), n, p)
    rng = random.Random(seed)
    mix = rng.sample(harmful_pool, n_harmful) + rng.sample(benign_pool, n_benign)
    rng.shuffle(mix)
    return mix
