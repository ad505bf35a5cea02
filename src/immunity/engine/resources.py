"""Memory and disk, named: an estimate of a real-model run's memory before it loads anything,
and one line instead of a traceback when memory or disk runs out.

The estimate is deliberately rough (it is a warning, not a scheduler): weights at their stored
precision, plus, when some stage trains every weight, float32 gradients and AdamW's two moments;
plus activations for the largest training batch at `SEQUENCE` tokens (per decoder layer about
34 x hidden values per token, the usual transformer count, and the float32 logits with their
gradient over the vocabulary). Parameter counts are read from the safetensors headers, so
nothing is loaded to estimate.
"""

from __future__ import annotations

import errno
import json
import resource
import struct
from dataclasses import dataclass
from pathlib import Path

SEQUENCE = 256  # tokens per training example assumed by the estimate (prompt + answer)
GB = 2**30
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    optimizer: float
    activations: float
    batch: int
    available: float | None

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations

    def line(self) -> str:
        have = f"; {self.available / GB:.1f} GB available" if self.available is not None else ""
        return (
            f"memory estimate for this run: ~{self.total / GB:.1f} GB (weights {self.weights / GB:.1f}, gradients "
            f"and optimizer {self.optimizer / GB:.1f}, activations {self.activations / GB:.1f} at batch "
            f"{self.batch} x {SEQUENCE} tokens){have}"
        )

    def too_large(self) -> bool:
        return self.available is not None and self.total > self.available


def available_memory() -> float | None:
    """Bytes of memory available to new work (Linux's MemAvailable, capped by a cgroup limit), or
    None where it cannot be read."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            found = min(found or int(limit), int(limit) - used)
    except (OSError, ValueError):
        pass
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:  # a process limit (ulimit -v) binds before the machine's
        size = next(
            (
                int(line.split()[1]) * 1024
                for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmSize:")
            ),
            0,
        )
        found = min(found or address_space, max(0, address_space - size))
    return found


def _tensor_bytes(directory: Path) -> tuple[int, int]:
    """(parameters, bytes) of a model directory's safetensors files, from their headers."""
    count = size = 0
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in meta["shape"]:
                numel *= dim
            count += numel
            size += numel * DTYPE_BYTES.get(meta["dtype"], 4)
    return count, size


def estimate(model_dir: str | Path, batch: int, full_training: bool, dtype: str = "auto") -> MemoryEstimate | None:
    """The estimate for training a model directory at `batch` (None if it has no readable config
    or weights)."""
    directory = Path(model_dir)
    try:
        config = json.loads((directory / "config.json").read_text())
        parameters, stored = _tensor_bytes(directory)
    except (OSError, ValueError, KeyError, struct.error):
        return None
    if not parameters:
        return None
    config = config.get("text_config", config)
    hidden, layers = config.get("hidden_size", 0), config.get("num_hidden_layers", 0)
    vocab = config.get("vocab_size", 0)
    weights = stored if dtype == "auto" else parameters * {"float32": 4}.get(dtype, 2)
    optimizer = parameters * 12 if full_training else 0  # float32 gradient + AdamW's two moments
    per_token = layers * hidden * 34 + vocab * 2  # activations, then logits and their gradient
    activations = batch * SEQUENCE * per_token * 4
    return MemoryEstimate(weights, optimizer, activations, batch, available_memory())


# -- one line when memory or disk runs out ------------------------------------------------------
MEMORY_TEXTS = ("cannot allocate memory", "can't allocate memory", "out of memory", "not enough memory")
DISK_TEXTS = ("no space left on device", "disk quota exceeded")


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def resource_message(err: BaseException) -> str | None:
    """One line for an error that says memory or disk ran out (anywhere in its chain), or None.
    (safetensors reports a failed memory map as a 'corrupt or truncated' file with 'Cannot
    allocate memory' in it: that is memory, not a damaged file.)"""
    for cause in _chain(err):
        code = getattr(cause, "errno", None)
        text = str(cause).lower()
        if isinstance(cause, MemoryError) or code == errno.ENOMEM or any(t in text for t in MEMORY_TEXTS):
            have = available_memory()
            where = f" ({have / GB:.1f} GB available now)" if have is not None else ""
            return (
                f"out of memory{where}: lower the batch sizes (attack.batch_size, defense.batch_size, "
                "eval.batch_size), set micro_batches=K or gradient_checkpointing=true, or free memory"
            )
        if code in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in DISK_TEXTS):
            name = getattr(cause, "filename", None)
            return (
                f"disk full{f' writing {name}' if name else ''}: free space, or point IMMUNITY_CACHE and --out "
                "at a disk that has it (then `immunity cache clean` removes what was left half-written)"
            )
    return None
