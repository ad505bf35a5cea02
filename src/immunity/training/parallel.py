"""Data parallelism for every training loop: one global batch, split over processes and micro-batches.

Under `torchrun` or `accelerate launch` (both set RANK / WORLD_SIZE; accelerate's `PartialState`
starts the process group: gloo on CPU, NCCL on GPUs) a run's defense and attack train on N
processes. Inside `data_parallel(micro_batches=M)`:

- every process draws the same global batches, from every data stream a step uses (same seeds);
- the global batch is split into S = N x M contiguous shards; shard g = rank x M + m runs the
  whole per-step computation (a meta-learner's simulated attacker included) on its slice of every
  batch the step draws, with its own seed (dropout differs per shard, as per rank under DDP);
- gradients are weighted by the shard's share of the batch and summed over micro-batches, then
  over processes, once per optimizer step (an all-reduce of every trainable gradient, so
  parameters a step leaves unused on one rank cannot hang it, as they do `DistributedDataParallel`;
  the model is never wrapped, so hooks, `torch.func` and double backward work unchanged).

So N processes equal one process with N micro-batches per step (tests/test_data_parallel.py,
relative 1e-5); for losses that are means over examples they also equal one process on the
whole batch. With S = 1 nothing here changes a computation.

With `fsdp`, a model trained by `train` is sharded (FSDP2 `fully_shard` per decoder layer, the
layers found by layer discovery): FSDP reduces the gradients in backward and the model is
gathered back after training. Defenses that differentiate the weights themselves or run their
own loops declare `supports_fsdp = False` and are refused under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch


@dataclass
class _State:
    enabled: bool = False
    micro: int = 1  # micro-batches per process
    shard: int = 0  # global index of the shard being computed
    fsdp: bool = False  # shard the model trained by `train` (FSDP2) instead of replicating it
    sharded: bool = False  # a sharded model is training now: FSDP reduces its gradients itself
    step_id: int = 0  # counts steps of every loop, so that streams know when one starts
    micro_step: int = 0  # counts micro-steps, likewise


STATE = _State()


def launched() -> bool:
    """True in a process started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _partial_state():
    from accelerate import PartialState  # starts the process group from the launcher's environment

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return _partial_state().num_processes if launched() else 1


def rank() -> int:
    return _partial_state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if launched():
        return _partial_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def barrier() -> None:
    if launched():
        _partial_state().wait_for_everyone()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds and caches the base model), then the others
    (who then read the cache); a no-op in one process."""
    if not launched():
        yield
        return
    with _partial_state().main_process_first():
        yield


@contextmanager
def data_parallel(micro_batches: int = 1, fsdp: bool = False):
    """Within the block, `train`, `accumulate` and sharded streams split every global batch into
    world_size() x micro_batches shards; with `fsdp`, `train` also shards the model it trains."""
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be at least 1, got {micro_batches}")
    saved = (STATE.enabled, STATE.micro, STATE.fsdp)
    STATE.enabled, STATE.micro, STATE.fsdp = True, micro_batches, fsdp
    try:
        yield
    finally:
        STATE.enabled, STATE.micro, STATE.fsdp = saved


@contextmanager
def sharded(model):
    """The model to train: `model` itself, or (FSDP, more than one process) a copy whose decoder
    layers and root are sharded with FSDP2's `fully_shard` (parameters, gradients and optimizer
    state split over the processes). On exit the trained weights are gathered back into `model`,
    which stays a plain module (hooks, `torch.func`, LoRA merges and saving work on it as before)."""
    if not (STATE.enabled and STATE.fsdp and world_size() > 1):
        yield model
        return
    import copy

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from ..models import decoder_layers

    copied = copy.deepcopy(model)
    for layer in decoder_layers(copied):
        fully_shard(layer.module)
    fully_shard(copied)
    STATE.sharded = True
    try:
        yield copied
    finally:
        STATE.sharded = False
    full = get_model_state_dict(copied, options=StateDictOptions(full_state_dict=True))
    model.load_state_dict(full)
    del copied


def shard_count() -> int:
    return world_size() * STATE.micro if STATE.enabled else 1


def shard(batch: dict, index: int | None = None) -> dict:
    """Shard `index` (default: the one being computed) of every tensor in `batch`, along dim 0."""
    count = shard_count()
    if count == 1:
        return batch
    index = STATE.shard if index is None else index
    return {k: torch.tensor_split(v, count)[index] for k, v in batch.items()}


def _seed_for(seed: int, step: int, index: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + index) % (2**63)


def _sync(params: list[torch.Tensor], values: list[float]) -> list[float]:
    """Sum the (already weighted) gradients and logged values over processes; a gradient that
    no process has stays None (the optimizer skips it, as in one process)."""
    if world_size() == 1:
        return values
    import torch.distributed as dist

    if STATE.sharded:  # FSDP has averaged the gradients over processes in backward
        reduced = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(reduced)
        return (reduced / world_size()).tolist()

    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        + [torch.tensor(values, dtype=torch.float32, device=dev)]
    )
    dist.all_reduce(has)
    dist.all_reduce(flat)
    offset = 0
    for p, present in zip(params, has.tolist()):
        part = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        p.grad = part.clone() if present else None
        offset += p.numel()
    return flat[offset:].tolist()


def accumulate(
    params: list[torch.Tensor],
    compute: Callable[[], float | tuple[float, ...]],
    seed: int,
    step: int,
    weights: Callable[[int], float] | None = None,
):
    """The gradient of one optimizer step in `.grad`: `compute()` writes its shard's gradients
    (by backward, or by setting `.grad`) and returns what it logs (a number or a tuple); it is
    run once per local micro-batch with that shard's index and seed set, weighted by
    `weights(index)` (default: an equal share) and summed, then summed over processes. Returns
    the step's weighted log values. With one shard this is just `compute()`."""
    STATE.step_id += 1
    count = shard_count()
    if count == 1:
        STATE.shard = 0
        STATE.micro_step += 1
        return compute()
    first = rank() * STATE.micro
    totals: list[float] | None = None
    scalar = True
    summed: list[torch.Tensor | None] = [None] * len(params)
    for index in range(first, first + STATE.micro):
        # FSDP averages over processes, so a micro-batch weighs 1 / M in its process (exact
        # when shards are equal; the last, shorter batch of an epoch is weighted alike)
        weight = 1.0 / STATE.micro if STATE.sharded else weights(index) if weights else 1.0 / count
        STATE.shard = index
        STATE.micro_step += 1
        for p in params:
            p.grad = None
        if weight > 0:
            torch.manual_seed(_seed_for(seed, step, index))
            values = cast(Any, compute())
            scalar = not isinstance(values, tuple)
            values = [values] if scalar else list(values)
            weighted = [weight * v for v in values]
            totals = weighted if totals is None else [t + w for t, w in zip(totals, weighted)]
        for i, p in enumerate(params):
            if p.grad is not None:
                scaled = weight * p.grad
                summed[i] = scaled if summed[i] is None else cast(torch.Tensor, summed[i]) + scaled
    for p, g in zip(params, summed):
        p.grad = g
    totals = _sync(params, totals if totals is not None else [0.0])
    return totals[0] if scalar else tuple(totals)


class SharedStream:
    """An endless stream of global batches that every micro-batch of a step reads alike: the
    k-th draw of a micro-batch in step t is the k-th global batch of step t (drawn once), cut to
    the micro-batch's shard (`split=True`) or whole (a batch every shard must see, e.g. the one
    T-Vaccine scores layers on). Outside a multi-shard step it is the plain stream."""

    def __init__(self, batches, split: bool = True):
        self.batches, self.split = batches, split
        self.seen: dict[int, dict] = {}
        self.step, self.micro_step, self.drawn = -1, -1, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if shard_count() == 1:
            return next(self.batches)
        if STATE.step_id != self.step:
            self.step, self.seen = STATE.step_id, {}
        if STATE.micro_step != self.micro_step:
            self.micro_step, self.drawn = STATE.micro_step, 0
        if self.drawn not in self.seen:
            self.seen[self.drawn] = next(self.batches)
        batch = self.seen[self.drawn]
        self.drawn += 1
        return shard(batch) if self.split else batch
