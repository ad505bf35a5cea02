"""The arithmetic a run trains in: float32, or bfloat16 autocast with float32 master weights and
optimizer state (what the papers' own GPU runs use; on a CPU with AVX-512 BF16 it is the faster
path). `auto` is resolved to one of the two before a run's configuration is hashed, so a run id
always says what ran and the same configuration means the same numbers on any machine."""

from __future__ import annotations

import contextlib
import sys
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("float32", "bfloat16", "auto")
_WARNED: set[str] = set()  # devices warned about once per process


def bf16_supported(device: str = "cpu") -> bool:
    """Whether `device` computes bfloat16 natively (AVX-512 BF16 / AMX on a CPU; compute
    capability 8 or more on CUDA)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    capability = torch.backends.cpu.get_cpu_capability().upper()
    return "AVX512" in capability and _cpu_flags_have("avx512_bf16", "amx_bf16")


def _cpu_flags_have(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return any(flag in text for flag in flags)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """`auto` -> bfloat16 where the device computes it natively, else float32; others as given
    (a bfloat16 request on a device without native support is kept, with a one-line warning:
    never silently changed)."""
    if precision == "auto":
        return "bfloat16" if bf16_supported(device) else "float32"
    if precision == "bfloat16" and not bf16_supported(device) and device not in _WARNED:
        _WARNED.add(device)
        print(
            f"immunity: warning: precision=bfloat16 on a {device} without native bfloat16: it runs, emulated "
            "and slower; precision=float32 is faster here",
            file=sys.stderr,
            flush=True,
        )
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager:
    """The training context of `precision`: bfloat16 autocast (weights, gradients and optimizer
    state stay float32), or nothing for float32.

    Autocast's cache of low-precision weight copies is off: one region spans a whole training
    stage, and a cached copy made at the first step would outlive every optimizer update after it
    (measured: `sft` under a cached region released the unaligned base, HS before 100 %)."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)
