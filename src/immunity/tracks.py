"""Real tracks: the settings under which a named real model is measured on a laptop CPU, so
that the stage commands need no extra keys (`immunity prepare` writes the track's name on the
model's card; a model made from it carries the name on). Pure data.

A track gives run keys (evaluation sizes, micro-batches, answer length), the benign and task
sources added when the user gives none, and per defense and per attack the budget (steps,
batch, sequence) at which it fits the CPU and 12 GB of memory. Keys the user sets win; a
defense or attack not listed runs at its own defaults. Every number here was chosen on the
validation split (docs/real.md, "Budgets").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Track:
    name: str
    settings: dict = field(default_factory=dict)
    benign: tuple[str, ...] = ()  # benign sources added when the data has none
    task: str = ""  # the fine-tuning task source when none is given
    defenses: dict = field(default_factory=dict)  # defense -> {key: value}
    attacks: dict = field(default_factory=dict)  # attack -> {key: value}


SMOLLM2 = Track(
    name="smollm2-135m-instruct",
    settings={"eval.judge": "keyword", "eval.max_prompts": 48, "eval.max_new_tokens": 48, "eval.batch_size": 48,
              "answer_tokens": 64, "micro_batches": 2},
    benign=("word-problems#n=200", "capitals#n=180"),
    task="sums#n=400",
    defenses={
        "sft": {"epochs": 1, "batch_size": 16, "lr": 1e-3},
    },
    attacks={
        "harmful-finetune": {"n": 64, "p": 1.0, "max_steps": 16, "batch_size": 8, "lr": 3e-4},
        "benign-finetune": {"n": 64, "max_steps": 16, "batch_size": 8, "lr": 3e-4},
    },
)

TRACKS = {SMOLLM2.name: SMOLLM2}
