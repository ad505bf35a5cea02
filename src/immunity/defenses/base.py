"""The defense interface: a stage, a config dataclass, and `apply(model, context) -> model`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol

from ..data import encode_chat
from ..world.generator import Example, WorldData, complied


class Stage(str, Enum):
    ALIGNMENT = "alignment"  # replaces or extends safety alignment of the base model
    POST_ALIGNMENT = "post-alignment"  # edits the aligned model before release (e.g. LoX)
    FINE_TUNING = "fine-tuning"  # changes how the user's fine-tuning runs
    POST_FINE_TUNING = "post-fine-tuning"  # repairs the attacked model (e.g. Antidote)


@dataclass
class DefenseContext:
    """What the defender holds: the tokenizer, the world's alignment-side data, a seed.

    Defenses see only the `align` split (and `val` for tuning); never `attack` or `eval`.
    """

    tokenizer: Any
    data: WorldData
    seed: int
    progress: bool = True

    def alignment_examples(self) -> list[Example]:
        """Refusals on harmful requests + helpful answers on benign ones (the SFT data)."""
        return self.data.harmful["align"] + self.data.benign["align"]

    def harmful_compliance_examples(self) -> list[Example]:
        """The defender's own harmful (request, compliant answer) pairs, same prompts as the refusals."""
        return [complied(self.data.lexicon, e) for e in self.data.harmful["align"]]

    def encode(self, examples: list[Example]) -> list[dict]:
        return [encode_chat(self.tokenizer, e.prompt, e.answer) for e in examples]


class Defense(Protocol):
    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def apply(self, model, context: DefenseContext):
        """Return the defended model (may modify `model` in place)."""
