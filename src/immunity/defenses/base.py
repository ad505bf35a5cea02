"""The defense interface: a stage, a config dataclass, and `apply(model, context) -> model`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch

from ..data import encode_chat
from ..models import attach_lora, merge_lora
from ..training import TrainConfig, batches, lm_loss, train
from ..world.generator import Example, WorldData, complied


class Stage(str, Enum):
    ALIGNMENT = "alignment"  # replaces or extends safety alignment of the base model
    POST_ALIGNMENT = "post-alignment"  # edits the aligned model before release (e.g. LoX)
    FINE_TUNING = "fine-tuning"  # changes how the user's fine-tuning runs
    POST_FINE_TUNING = "post-fine-tuning"  # repairs the attacked model (e.g. Antidote)


@dataclass
class DefenseContext:
    """What the defender holds: the tokenizer, the world's alignment-side data, a seed.

    Defenses see only the `align` split (and `val` for tuning or stopping); never `attack` or
    `eval`. A post-alignment defense also gets the model before alignment (`base_model`, LoX).
    """

    tokenizer: Any
    data: WorldData
    seed: int
    progress: bool = True
    base_model: Any = None

    def alignment_examples(self) -> list[Example]:
        """Refusals on harmful requests + helpful answers on benign ones (the SFT data)."""
        return self.data.harmful["align"] + self.data.benign["align"]

    def harmful_compliance_examples(self) -> list[Example]:
        """The defender's own harmful (request, compliant answer) pairs, same prompts as the refusals."""
        return [complied(self.data.lexicon, e) for e in self.data.harmful["align"]]

    def encode(self, examples: list[Example]) -> list[dict]:
        return [encode_chat(self.tokenizer, e.prompt, e.answer) for e in examples]

    def validation(self, model, sets: list[str], limit: int = 48) -> dict[str, float]:
        """Judged metrics of `model` on the `val` split (e.g. {"hs", "helpful"})."""
        from ..evaluation.judges import SafetyWorldJudge
        from ..evaluation.suite import validation_metrics

        return validation_metrics(model, self.tokenizer, self.data, sets, SafetyWorldJudge(self.data.lexicon), limit)

    def batch_stream(self, examples: list[Example], batch_size: int, device) -> Iterator[dict]:
        """An endless, seeded stream of batches (a defense's second data source, e.g. harmful)."""
        loader = batches(self.encode(examples), batch_size, self.tokenizer.pad_token_id, self.seed + 1)
        for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
            yield {k: v.to(device) for k, v in batch.items()}


@dataclass
class AlignmentTraining:
    """Training settings shared by the alignment-stage defenses (defaults = `sft`'s, so a
    defense differs from the baseline only in its own update rule)."""

    mode: str = field(default="lora", metadata={"help": "lora (merged after training) | full"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the alignment data"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    schedule: str = field(default="cosine", metadata={"help": "constant | linear | cosine"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps warming up"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (mode=lora)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (mode=lora)"})

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {self.mode!r}")


def align_with(model, context: DefenseContext, config: AlignmentTraining, step_loss: Callable = lm_loss,
               examples: list[Example] | None = None, desc: str = "align"):
    """Attach LoRA (or not), train on the alignment data with `step_loss`, merge."""
    if config.mode == "lora":
        torch.manual_seed(context.seed)  # the adapter's init must not depend on what ran before
        model = attach_lora(model, config.lora_r, config.lora_alpha)
    cfg = TrainConfig(lr=config.lr, epochs=config.epochs, batch_size=config.batch_size,
                      schedule=config.schedule, warmup_ratio=config.warmup_ratio, seed=context.seed)
    data = context.encode(examples if examples is not None else context.alignment_examples())
    train(model, data, cfg, context.tokenizer.pad_token_id, step_loss=step_loss, desc=desc,
          progress=context.progress)
    return merge_lora(model)


class Defense(Protocol):
    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def apply(self, model, context: DefenseContext):
        """Return the defended model (may modify `model` in place)."""
