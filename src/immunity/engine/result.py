"""A run's result as a typed row: what `immunity run` prints, the store keeps and the reports read.

Built by the pipeline, checked when stored (`RunResult.from_dict(...).check()` in `Store.put`):
names, seeds and hashes have their types, every rate lies in [0, 1] or is missing. A metric an
attack brings (the backdoor's `hs_triggered`) lives in `extra_before` / `extra_after`, so a new
attack adds no field here; `metric(name, when)` reads standard and extra metrics alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

from ..fields import build_config
from ..registry import ATTACKS, lookup

# Metrics measured before and after the attack, and whether each is a rate in [0, 1].
MEASURED = {
    "hs": True,
    "refusal": True,
    "capability": True,
    "helpful": True,
    "hs_heldout": True,
    "fa": True,
    "harmful_nll": False,
    "over_refusal": True,
    "benign_nll": False,
}


class ResultError(ValueError):
    pass


@dataclass
class RunResult:
    defense: str
    attack: str
    seed: int
    model: str
    judge: str
    split: str
    config_hash: str
    code_version: str
    versions: dict
    run_id: str
    data: str
    data_hashes: dict
    attack_config: dict
    defense_config: dict
    hs_before: float | None = None
    refusal_before: float | None = None
    capability_before: float | None = None
    helpful_before: float | None = None
    hs_heldout_before: float | None = None
    fa_before: float | None = None
    harmful_nll_before: float | None = None
    over_refusal_before: float | None = None
    benign_nll_before: float | None = None
    hs_after: float | None = None
    refusal_after: float | None = None
    capability_after: float | None = None
    helpful_after: float | None = None
    hs_heldout_after: float | None = None
    fa_after: float | None = None
    harmful_nll_after: float | None = None
    over_refusal_after: float | None = None
    benign_nll_after: float | None = None
    extra_before: dict = field(default_factory=dict)  # an attack's own metrics (e.g. hs_triggered)
    extra_after: dict = field(default_factory=dict)
    attack_notes: dict = field(default_factory=dict)
    defense_notes: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    defense_seconds: float = 0.0
    peak_memory_mb: dict = field(default_factory=dict)
    processes: int = 1
    micro_batches: int = 1
    fsdp: bool = False
    precision: str = "float32"  # the training arithmetic that ran (rows stored before it existed: float32)
    created: str = ""  # when the store saved it
    stale: bool = False  # made by code that has changed since (set by the report that reads it)

    @property
    def attack_cls(self) -> type[Any]:
        return lookup(ATTACKS, "attack", self.attack)

    @property
    def attack_settings(self):
        """The attack's config, typed (`row.attack_settings.p`)."""
        return build_config(self.attack_cls.Config, self.attack_config)

    def label(self) -> str:
        """The attack setting, as the attack names it in tables."""
        return self.attack_cls.label(self.attack_config)

    def attacker_hs(self) -> float | None:
        """What the attacker reached: HS after, or the attack's own metric (a backdoor's HS with
        its trigger)."""
        return self.metric(self.attack_cls.attacker_metric, "after")

    def trains_on_task(self) -> bool:
        """A fine-tuning attack with task data in its mix: only then is FA its to keep."""
        return self.attack_cls.fine_tunes and self.attack_cls.trains_on_task(self.attack_config)

    def metric(self, name: str, when: str) -> float | None:
        """`name` ("hs", "hs_triggered", ...) measured `when` ("before" | "after")."""
        if name in MEASURED:
            return getattr(self, f"{name}_{when}")
        return getattr(self, f"extra_{when}").get(name)

    def check(self) -> RunResult:
        """The row's types and ranges, or a ResultError naming the first wrong field."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = cast(
                Any, {"str": str, "int": int, "dict": dict, "bool": bool, "float": (int, float)}.get(str(f.type))
            )
            if expected is not None and not isinstance(value, expected):
                raise ResultError(f"result field {f.name!r}: expected {f.type}, got {value!r}")
        for name, is_rate in MEASURED.items():
            for when in ("before", "after"):
                _check_number(f"{name}_{when}", self.metric(name, when), is_rate)
        for when in ("before", "after"):
            for name, value in getattr(self, f"extra_{when}").items():
                _check_number(f"extra_{when}.{name}", value, name.startswith(("hs", "refusal")))
        if not self.run_id or not self.config_hash or not self.code_version:
            raise ResultError("a result needs its run id, config hash and code version")
        return self

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("created", "stale")}

    @classmethod
    def from_dict(cls, row: dict) -> RunResult:
        """The typed row of a stored or printed result (keys the row type does not have, such as
        the store's `config` and `created`, are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


def _check_number(name: str, value, is_rate: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultError(f"result field {name!r}: expected a finite number or None, got {value!r}")
    if is_rate and not 0.0 <= value <= 1.0:
        raise ResultError(f"result field {name!r}: a rate must lie in [0, 1], got {value}")
