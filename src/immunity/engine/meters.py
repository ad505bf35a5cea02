"""What a run costs and shows: seconds and peak resident memory per stage (one definition of
peak memory: the process's resident high-water mark, VmHWM, reset at the start of each run; on
CUDA, the peak allocated on the device), and transformers' own progress bars silenced when a
run shows none."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

PROC_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> None:
    """Start this run's peak afresh: a worker runs several runs in one process, and the
    process's lifetime peak would charge each run with its predecessors' memory."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the resident peak
    except OSError:
        pass  # elsewhere the peak stays the process's


def peak_memory_mb() -> float:
    """Peak resident memory since `reset_peak_memory` (Linux; the process's peak elsewhere; CUDA:
    peak allocated on the device)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    if PROC_STATUS.exists():
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.peak_mb[name] = round(peak_memory_mb(), 1)


@contextmanager
def quiet_transformers(quiet: bool):
    """Hide transformers' own progress bars for the duration, then restore them."""
    utils = transformers.utils.logging
    was_enabled = utils.is_progress_bar_enabled()
    if quiet:
        utils.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            utils.enable_progress_bar()
