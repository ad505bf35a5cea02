"""One small training loop on `accelerate`, shared by pretraining, alignment, defenses and attacks.

A defense composes its update from `train(..., step_loss=...)` rather than subclassing
`transformers.Trainer`: the loop owns data order, optimizer, schedule, clipping and progress; the
caller owns the loss. Under `torchrun` / `accelerate launch` the same loop trains data-parallel
(`parallel`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.func import functional_call
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..data import collate
from . import parallel
from .losses import token_ce, upcast

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 16
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("lr and batch_size must be positive")
        if self.max_steps < 0 or (self.max_steps == 0 and self.epochs <= 0):
            raise ValueError(f"a training budget must be positive: epochs={self.epochs}, max_steps={self.max_steps}")

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(n_examples / self.batch_size)))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops and stores nothing."""


def check_finite(value: float, desc: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{desc}: the loss is {value} at step {step}; the run stopped and stored no result "
            "(lower the learning rate)"
        )


def lm_loss(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over unmasked (label != -100) tokens (computed here rather
    than by the model so that the dtype rule of `upcast` holds)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_ce(logits, batch["labels"])


_PROVIDER_OBJECTIVE: ContextVar[Callable | None] = ContextVar("provider_objective", default=None)


@contextmanager
def provider_objective(step_loss: Callable) -> Iterator[None]:
    """Fine-tuning-as-a-service: inside the block, a fine-tuning that asks `train` for the plain
    answer-token loss (`lm_loss`) gets the provider's `step_loss(model, batch)` instead. The
    attacker chooses the data and the budget; the provider runs the fine-tuning with its own
    objective (a `fine-tuning`-stage defense)."""
    token = _PROVIDER_OBJECTIVE.set(step_loss)
    try:
        yield
    finally:
        _PROVIDER_OBJECTIVE.reset(token)


def logits_with(model, weights: dict, batch) -> torch.Tensor:
    """Upcast logits of `model` run with `weights` (name -> tensor) in place of those parameters,
    which stay untouched: how meta-learning defenses evaluate simulated attacker weights."""
    logits = functional_call(
        model, weights, args=(batch["input_ids"],), kwargs={"attention_mask": batch["attention_mask"]}
    ).logits
    return upcast(logits)


class AroundFrozen(torch.nn.Module):
    """What `train` updates when a model stays frozen: the parameters of `trainable` (an
    intervention or perturbation the caller has hooked into `model`); the step's loss is the
    model's answer-token loss with the hooks in place."""

    def __init__(self, model, trainable: torch.nn.Module):
        super().__init__()
        self.trainable = trainable
        self.__dict__["model"] = model  # not a submodule: its parameters are not trained

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def loss(self, batch) -> torch.Tensor:
        return lm_loss(self.model, batch)


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule_name(cfg: TrainConfig) -> str:
    if cfg.schedule == "constant":
        return "constant_with_warmup"
    return cfg.schedule


_LENGTH_GROUPED: ContextVar[bool] = ContextVar("length_grouped", default=False)


@contextmanager
def length_grouped(enabled: bool = True) -> Iterator[None]:
    """Inside the block, shuffled training batches hold examples of similar length, so a batch is
    padded less (the real track's alignment data mixes short refusals with long answers: 39 % of
    its tokens were padding). The examples each pass sees are the same; their grouping differs."""
    token = _LENGTH_GROUPED.set(enabled)
    try:
        yield
    finally:
        _LENGTH_GROUPED.reset(token)


class LengthGroupedBatches:
    """Batches of similar length, in random order: each pass shuffles the examples, cuts the order
    into windows of `WINDOW` batches, sorts each window by length, cuts it into batches and
    shuffles the batches (the windowed sort of transformers' LengthGroupedSampler; windows keep
    a batch's members a random draw among similar lengths rather than fixed neighbours)."""

    WINDOW = 8

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = self.batch_size * self.WINDOW
        groups = []
        for start in range(0, len(order), window):
            by_length = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            groups += [by_length[i : i + self.batch_size] for i in range(0, len(by_length), self.batch_size)]
        for k in torch.randperm(len(groups), generator=self.generator).tolist():
            yield groups[k]


def batches(features: list[dict], batch_size: int, pad_id: int, seed: int, shuffle: bool = True):
    """A loader of padded batches (shuffled with `seed`; length-grouped inside `length_grouped()`)."""
    generator = torch.Generator().manual_seed(seed)
    collate_fn = lambda fs: collate(fs, pad_id)
    if shuffle and _LENGTH_GROUPED.get():
        lengths = [len(f["input_ids"]) for f in features]
        return DataLoader(
            cast(Any, features),
            batch_sampler=LengthGroupedBatches(lengths, batch_size, generator),
            collate_fn=collate_fn,
        )
    return DataLoader(
        cast(Any, features), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn
    )


def padding_fraction(loader) -> float:
    """The share of a loader's token slots that are padding (one pass)."""
    slots = real = 0
    for batch in loader:
        slots += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
    return 1 - real / slots if slots else 0.0


def train(
    model,
    features: list[dict],
    cfg: TrainConfig,
    pad_id: int,
    step_loss: Callable = lm_loss,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Train `model` in place on tokenised `features`; return the loss of every step.

    `step_loss(model, batch)` (or `step_loss(model, batch, step)`, given the 1-based optimizer
    step, the same for each micro-batch of a step: for losses with a schedule) returns the
    tensor to differentiate, or (that tensor, the number
    to log) when the differentiated objective is a surrogate (e.g. Booster's gradient terms), or
    (None, the number to log) when it has already written the gradients itself (T-Vaccine must
    run backward while inactive layers are frozen and checkpointed). Inside
    `parallel.data_parallel()` each process computes its shards of every batch and the
    gradients are synchronised before the update (see `parallel`).
    """
    if not features:
        raise ValueError(f"{desc}: no training examples")
    if step_loss is lm_loss and _PROVIDER_OBJECTIVE.get() is not None:
        step_loss = cast(Callable, _PROVIDER_OBJECTIVE.get())
    torch.manual_seed(cfg.seed)
    with parallel.sharded(model) as trained:
        losses = _steps(trained, features, cfg, pad_id, step_loss, desc, progress, on_step)
    params = [p for p in model.parameters() if p.requires_grad]
    if not all(torch.isfinite(p).all() for p in params):  # the last update can diverge after its loss was read
        raise TrainingDiverged(
            f"{desc}: the weights are not finite after step {len(losses)}; the run stopped "
            "and stored no result (lower the learning rate)"
        )
    model.eval()
    return losses


def _steps(
    model, features, cfg: TrainConfig, pad_id: int, step_loss: Callable, desc: str, progress: bool, on_step
) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg)
    total = cfg.total_steps(len(features))
    scheduler = get_scheduler(
        _schedule_name(cfg), optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
    )
    loader = batches(features, cfg.batch_size, pad_id, cfg.seed)
    device = model.get_input_embeddings().weight.device
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, disable=not progress or not parallel.is_main(), leave=False)
    while len(losses) < total:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            step = len(losses) + 1
            losses.append(
                parallel.accumulate(
                    params,
                    lambda: _backward(model, batch, step_loss, step),
                    cfg.seed,
                    step,
                    weights=_example_shares(batch),
                )
            )
            check_finite(losses[-1], desc, len(losses))
            if len(losses) == 1 and all(p.grad is None for p in params):
                raise RuntimeError(
                    f"{desc}: the step computed no gradient for the parameters being trained "
                    "(under fsdp=true: this method's step does not use the model it is given)"
                )
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(len(losses))
            if len(losses) >= total:
                break
    bar.close()
    return losses


def _backward(model, batch: dict, step_loss: Callable, step: int) -> float:
    """Gradients of this shard's loss; the number to log."""
    out = (
        step_loss(model, parallel.shard(batch), step)
        if _takes_step(step_loss)
        else step_loss(model, parallel.shard(batch))
    )
    loss, shown = out if isinstance(out, tuple) else (out, out)
    if loss is not None:
        loss.backward()
    return shown.item() if torch.is_tensor(shown) else float(shown)


def _takes_step(step_loss: Callable) -> bool:
    """Whether `step_loss` asks for the step: a third positional parameter without a default."""
    required = [
        p
        for p in inspect.signature(step_loss).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) >= 3


def _example_shares(batch: dict) -> Callable[[int], float]:
    """Shard i's weight: its share of the batch's examples (the last batch may split unevenly)."""
    size = len(batch["input_ids"])
    return lambda i: len(parallel.shard(batch, i)["input_ids"]) / size
