"""What every attack's config shares, and the attack interface.

An attack is registered with `@register_attack(name)` (the contract in `registry.ATTACK`), has a
`Config` dataclass (its own typed keys, set as `attack.KEY=VALUE` after `attack=NAME`) and
`run(model, tokenizer, data, seed, progress, merge, adapter) -> model`: the attacked model, which
the pipeline evaluates like any other. What it decided or measured goes in `self.notes`.
Inference-time attacks return the model with their intervention attached as a forward hook and
declare `writes_weights = False` (there are no weights to export).

`Attack` gives the contract's optional members their defaults; an attack with its own metric
overrides `extra_prompt_sets` (more prompts to evaluate, e.g. the backdoor's triggered requests)
and `attacker_metric` (which of them says what the attacker reached), and a fine-tuning attack
overrides `trains_on_task`: so a new attack is one file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, cast

from ..models import decoder_layers
from ..world import TASKS, Example


@dataclass
class AttackTask:
    task: str = field(
        default="sentiment",
        metadata={
            "help": f"benign task (fine-tuning data, and the FA metric): SafetyWorld's {' | '.join(TASKS)}, or the kind "
            "of a --task source"
        },
    )


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Attack:
    """Defaults of the attack contract's optional members."""

    Config: ClassVar[type]

    def __init__(self, config):
        self.config = config
        self.notes: dict = {}  # what the attack decided or measured (a layer, a norm): goes into the result

    @classmethod
    def label(cls, config: dict) -> str:
        """The attack setting in a table: its name, task and every key that differs from its
        defaults (settings differing anywhere are never merged into one)."""
        defaults = asdict(cls.Config())
        changed = " ".join(f"{k}={_value(v)}" for k, v in config.items() if k != "task" and defaults.get(k) != v)
        return " ".join(filter(None, (cast(Any, cls).name, config.get("task", ""), changed)))

    @classmethod
    def trains_on_task(cls, config: dict) -> bool:
        """Whether the attack fine-tunes on task data (then FA is its to keep)."""
        return False

    @classmethod
    def check_data(cls, config, data) -> None:
        """Raise ValueError if `data` cannot supply what the attack draws (checked before work)."""

    @classmethod
    def steps(cls, config) -> int | None:
        """Optimizer steps of the attack's budget (None: it trains nothing), for the budget check."""
        return None

    def extra_prompt_sets(self, sets: dict[str, list[Example]]) -> dict[str, list[Example]]:
        """More prompt sets to evaluate before and after the attack (their HS is reported as
        `hs_<set>`), made from the standard ones."""
        return {}

    def prompt_prefill(self, example: Example) -> list[int] | None:
        """Token ids forced at the start of the model's answer to `example` (an attack on the
        decoding, e.g. prefilling), or None."""
        return None


def chosen_layer(model, layer: int) -> int:
    """`attack.layer` as a decoder-layer index: -1 means the middle layer (depth // 2)."""
    depth = len(decoder_layers(model))
    index = depth // 2 if layer == -1 else layer
    if index >= depth:
        raise ValueError(f"attack.layer {index} is outside the model's {depth} layers")
    return index
