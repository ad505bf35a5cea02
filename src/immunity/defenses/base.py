"""The defense interface: a stage, a config dataclass, and `apply(model, context) -> model`.

Per-run state (a defense's second data stream, layer scores, step counters) lives in what
`apply` builds, never on the defense instance, so one instance can be applied twice. What a
defense decided or measured (LoX's rank, SOPHON's stop) it records with `context.note(...)`, and
an adapter it trained and merged is kept by `align_with` as `context.released_adapter`: both
travel with the released model (the pipeline caches them beside it), never inside its config.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from ..data import DataBundle, encode_chat
from ..evaluation.suite import validation_metrics
from ..models import attach_lora, merge_lora
from ..models.layers import LORA_TARGETS
from ..models.lora import ReleasedAdapter
from ..registry import Stage
from ..training import TrainConfig, batches, lm_loss, train
from ..training.parallel import SharedStream
from ..world import Example


@dataclass
class DefenseContext:
    """What the defender holds: the tokenizer, the data bundle, a judge for validation, a seed.

    Defenses see only the `align` split (and `val` for tuning or stopping); never `attack` or
    `eval`. A post-alignment defense also gets the model before alignment (`base_model`, LoX).
    """

    tokenizer: Any
    data: DataBundle
    seed: int
    progress: bool = True
    base_model: Any = None
    judge: Callable[[], Any] | None = None  # makes the judge of validation checks (SOPHON, LoX's search)
    notes: dict = field(default_factory=dict)  # what the defense decided or measured, for the result
    released_adapter: ReleasedAdapter | None = None  # the adapter it trained, before merging

    def note(self, **values) -> None:
        """Record what the defense decided or measured (it goes into the run's result)."""
        self.notes.update(values)

    def alignment_examples(self) -> list[Example]:
        """Refusals on harmful requests + helpful answers on benign ones (the SFT data)."""
        return self.data.get("refusals", "align") + self.data.benign.get("align", [])

    def benign_examples(self) -> list[Example]:
        """Helpful answers on benign requests only (no refusals)."""
        return self.data.get("benign", "align")

    def harmful_compliance_examples(self, split: str = "align") -> list[Example]:
        """The defender's own harmful (request, compliant answer) pairs; `split="val"` gives
        held-out ones for a defense's own stopping criterion."""
        return self.data.get("harmful", split)

    def encode(self, examples: list[Example]) -> list[dict]:
        return [encode_chat(self.tokenizer, e.prompt, e.answer) for e in examples]

    def validation(self, model, sets: list[str], limit: int = 48) -> dict[str, float]:
        """Judged metrics of `model` on the `val` split (e.g. {"hs", "helpful"})."""
        if self.judge is None:
            raise ValueError("this defense checks itself on the validation split and needs a judge (--judge)")
        # a metric is None only where no answer of its set was judged: the sets asked for are
        return cast(dict[str, float], validation_metrics(model, self.tokenizer, self.data, sets, self.judge(), limit))

    def batch_stream(self, examples: list[Example], batch_size: int, device, split: bool = True) -> Iterator[dict]:
        """An endless, seeded stream of batches (a defense's second data source, e.g. harmful).
        Data-parallel, each shard of a step reads its slice of the same global batches (or the
        whole batch, `split=False`: a batch every shard must decide alike on)."""
        loader = batches(self.encode(examples), batch_size, self.tokenizer.pad_token_id, self.seed + 1)
        endless = (
            {k: v.to(device) for k, v in batch.items()}
            for batch in itertools.chain.from_iterable(itertools.repeat(loader))
        )
        return SharedStream(endless, split)

    def fixed_batches(self, examples: list[Example], batch_size: int, device) -> list[dict]:
        """Every example once, in order (calibration and measurement sets)."""
        loader = batches(self.encode(examples), batch_size, self.tokenizer.pad_token_id, self.seed, shuffle=False)
        return [{k: v.to(device) for k, v in batch.items()} for batch in loader]


@dataclass
class AlignmentTraining:
    """Training settings shared by the alignment-stage defenses (defaults = `sft`'s, so a
    defense differs from the baseline only in its own update rule). A defense whose reference
    code trains a different adapter declares it by overriding `lora_*` (its adapter decides what
    a step length in weight space means, e.g. Booster's alpha)."""

    mode: str = field(default="lora", metadata={"help": "lora (merged after training) | full"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the alignment data"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    schedule: str = field(default="cosine", metadata={"help": "constant | linear | cosine"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps warming up"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (mode=lora)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha; the adapter's scale is alpha / r"})
    lora_targets: str = field(default="all", metadata={"help": "LoRA on: all | attention | qkv linear maps"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {self.mode!r}")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {LORA_TARGETS}, got {self.lora_targets!r}")
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size <= 0 or self.lora_r <= 0:
            raise ValueError("lr, epochs, batch_size and lora_r must be positive")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("warmup_ratio and lora_dropout must lie in [0, 1)")

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            schedule=self.schedule,
            warmup_ratio=self.warmup_ratio,
            seed=seed,
        )


def with_adapter(model, config: AlignmentTraining, seed: int):
    """The model with a fresh seeded adapter (mode=lora), or the model itself (mode=full)."""
    if config.mode != "lora":
        return model
    return attach_lora(
        model, config.lora_r, config.lora_alpha, seed=seed, dropout=config.lora_dropout, targets=config.lora_targets
    )


def align_with(
    model,
    context: DefenseContext,
    config: AlignmentTraining,
    step_loss: Callable = lm_loss,
    examples: list[Example] | None = None,
    desc: str = "align",
    features: list[dict] | None = None,
):
    """Attach the adapter (or not), train on the alignment data (or `examples`, or `features`
    already encoded) with `step_loss`, keep the trained adapter (`context.released_adapter`), merge."""
    model = with_adapter(model, config, context.seed)
    if features is not None:
        data = features
    else:
        data = context.encode(examples if examples is not None else context.alignment_examples())
    train(
        model,
        data,
        config.train_config(context.seed),
        context.tokenizer.pad_token_id,
        step_loss=step_loss,
        desc=desc,
        progress=context.progress,
    )
    if config.mode == "lora":
        context.released_adapter = ReleasedAdapter.of(model)
    return merge_lora(model)


def align_against_harmful(model, context: DefenseContext, config: AlignmentTraining, loss: Callable, desc: str):
    """`align_with` whose step also sees a batch of the defender's harmful (request, compliant
    answer) pairs: `loss(model, alignment_batch, harmful_batch)` (Booster, RepNoise, Condition
    Number). The harmful stream is seeded and endless; `config.batch_size` pairs per step."""
    harmful = context.batch_stream(
        context.harmful_compliance_examples(), config.batch_size, next(model.parameters()).device
    )
    return align_with(model, context, config, step_loss=lambda m, batch: loss(m, batch, next(harmful)), desc=desc)


class Defense:
    """What every defense shares: it is built from its config. A defense subclasses this and
    sets `stage` (a `Stage`) and `Config` (a dataclass), and defines `apply(model, context)`, which
    returns the defended model (it may modify `model` in place). The registry checks those
    members, not this base: a plugin may define them itself. Optional: `supports_fsdp = False`
    where `fsdp=true` may not shard what the defense trains."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type]
    supports_fsdp: ClassVar[bool]

    def __init__(self, config: Any) -> None:
        self.config = config

    def apply(self, model, context: DefenseContext):
        raise NotImplementedError
