"""Name -> implementation registries for defenses, attacks and judges (names validated).

Tables and decorators only: `immunity.builtins` is the one module that imports the built-ins.
"""

from __future__ import annotations

import difflib
from typing import Callable

DEFENSES: dict[str, type] = {}
ATTACKS: dict[str, type] = {}
JUDGES: dict[str, type] = {}


def _register(table: dict[str, type], kind: str, name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in table:
            raise ValueError(f"{kind} {name!r} registered twice")
        cls.name = name
        table[name] = cls
        return cls
    return wrap


def register_defense(name: str):
    return _register(DEFENSES, "defense", name)


def register_attack(name: str):
    return _register(ATTACKS, "attack", name)


def register_judge(name: str):
    return _register(JUDGES, "judge", name)


def lookup(table: dict[str, type], kind: str, name: str) -> type:
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(table))})")
    return table[name]

