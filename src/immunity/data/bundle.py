"""The data bundle: everything defenses, attacks and evaluation read, by role and split.

Defenses and attacks receive a bundle, never a data provider's objects, and never generate
text: SafetyWorld fills a bundle from its generator, real sources (`sources.py`) from files or
the hub. Roles:
    refusals[split]   harmful request -> refusal            (align: the defender's alignment data)
    harmful[split]    harmful request -> compliant answer    (align: the defender's harmful data;
                                                              attack: the attacker's; val/eval:
                                                              held-out pairs for NLL and judging)
    benign[split]     benign request -> helpful answer       (align: alignment data; val/eval: helpfulness)
    heldout[split]    harmful requests of categories never seen in alignment or attack
    tasks[name][split]  the attacker's benign fine-tuning task (attack) and its evaluation (val, eval)
Splits are disjoint and deduplicated by prompt; `hashes` records a content hash per role and
split, so a result says exactly which data produced it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..world import Example, WorldData, complied

ROLES = ("refusals", "harmful", "benign", "heldout", "tasks")


def content_hash(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.prompt, e.answer, e.kind, e.group]).encode())
    return digest.hexdigest()[:16]


@dataclass
class DataBundle:
    name: str
    refusals: dict[str, list[Example]] = field(default_factory=dict)
    harmful: dict[str, list[Example]] = field(default_factory=dict)
    benign: dict[str, list[Example]] = field(default_factory=dict)
    heldout: dict[str, list[Example]] = field(default_factory=dict)
    tasks: dict[str, dict[str, list[Example]]] = field(default_factory=dict)

    def hashes(self) -> dict[str, str]:
        out = {}
        for role in ROLES[:4]:
            for split, examples in getattr(self, role).items():
                if examples:
                    out[f"{role}/{split}"] = content_hash(examples)
        for task, splits in self.tasks.items():
            for split, examples in splits.items():
                if examples:
                    out[f"task:{task}/{split}"] = content_hash(examples)
        return out

    def get(self, role: str, split: str) -> list[Example]:
        """One role's examples on a split, or a clear error naming what is missing."""
        examples = getattr(self, role).get(split, [])
        if not examples:
            raise ValueError(
                f"the data ({self.name}) has no {role} examples on the {split!r} split; "
                f"give a source that provides them (--data)"
            )
        return examples

    def task(self, name: str, split: str) -> list[Example]:
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise ValueError(f"unknown fine-tuning task {name!r} in the data ({self.name}); known: {known}")
        return self.tasks[name].get(split, [])


def from_world(data: WorldData) -> DataBundle:
    """SafetyWorld's bundle: its requests with refusals, the same requests answered compliantly,
    benign requests, held-out categories and its three tasks, on its own splits."""
    return DataBundle(
        name="safetyworld",
        refusals={split: list(examples) for split, examples in data.harmful.items()},
        harmful={split: [complied(data.lexicon, e) for e in examples] for split, examples in data.harmful.items()},
        benign={split: list(examples) for split, examples in data.benign.items()},
        heldout={split: list(examples) for split, examples in data.heldout.items()},
        tasks={task: dict(splits) for task, splits in data.tasks.items()},
    )
