"""Name -> implementation registries for defenses, attacks and judges, and the one plugin
contract they share, checked at registration.

Tables and decorators only: `immunity.builtins` is the one module that imports the built-ins.

A plugin is a class with the members its kind requires and, optionally, the kind's flags; a
flag it leaves out gets its default here, so code reads `cls.writes_weights` directly. A class
member that is not in the contract but nearly spells one of its names (a misspelled flag:
`supports_fspd = False`) is an error at import, as is a missing member, so a plugin cannot be silently half-registered.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Contract:
    """What a plugin of one kind must define (`required`) and may declare (`flags`, with their
    defaults, and `optional` methods or attributes a base class may provide)."""

    kind: str
    required: tuple[str, ...]
    flags: dict[str, object] = field(default_factory=dict)
    optional: tuple[str, ...] = ()

    def check(self, cls: type) -> None:
        missing = [m for m in self.required if not hasattr(cls, m)]
        if missing:
            raise TypeError(f"{self.kind} {cls.__qualname__} lacks {', '.join(missing)} (a {self.kind} defines "
                            f"{', '.join(self.required)})")
        known = set(self.required) | set(self.flags) | set(self.optional) | {"name"}
        for owner in inspect.getmro(cls)[:-1]:  # the class and its bases, not `object`
            for attr in vars(owner):
                close = difflib.get_close_matches(attr, sorted(known), n=1, cutoff=0.8)
                if attr not in known and not attr.startswith("__") and close:
                    raise TypeError(f"{self.kind} {cls.__qualname__}: unknown member {attr!r}; did you mean "
                                    f"{close[0]!r}? (a {self.kind} may define {', '.join(sorted(known))})")
        for flag, default in self.flags.items():
            if not hasattr(cls, flag):
                setattr(cls, flag, default)


DEFENSE = Contract("defense", required=("stage", "Config", "apply"),
                   flags={"supports_fsdp": True})  # whether `fsdp=true` may shard what it trains
ATTACK = Contract("attack", required=("Config", "run"),
                  flags={"writes_weights": True,  # False: acts at inference time (a hook), nothing to export
                         "fine_tunes": False,  # trains an adapter or the weights: what a repair repairs
                         "attacker_metric": "hs"},  # the metric that says what the attacker reached
                  optional=("label", "trains_on_task", "extra_prompt_sets", "prompt_prefill", "check_data", "steps"))
JUDGE = Contract("judge", required=("score", "build"),
                 flags={"needs_model": False,  # KIND:PATH_OR_ID
                        "data": "any",  # "safetyworld" | "real" | "any": the data it can score
                        "usage": ""})  # one line for help texts

DEFENSES: dict[str, type] = {}
ATTACKS: dict[str, type] = {}
JUDGES: dict[str, type] = {}
CONTRACTS = {"defense": DEFENSE, "attack": ATTACK, "judge": JUDGE}


def _register(table: dict[str, type], contract: Contract, name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in table:
            raise ValueError(f"{contract.kind} {name!r} registered twice")
        contract.check(cls)
        cls.name = name
        table[name] = cls
        return cls
    return wrap


def register_defense(name: str):
    return _register(DEFENSES, DEFENSE, name)


def register_attack(name: str):
    return _register(ATTACKS, ATTACK, name)


def register_judge(name: str):
    return _register(JUDGES, JUDGE, name)


def lookup(table: dict[str, type], kind: str, name: str) -> type:
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(table))})")
    return table[name]
