"""Name -> implementation registries for defenses, attacks and judges, and the one plugin
contract they share, checked at registration.

Tables and decorators only: `immunity.builtins` is the one module that imports the built-ins.

A plugin is a class with the members its kind requires and, optionally, the kind's flags; a
flag it leaves out gets its default here, so code reads `cls.writes_weights` directly. A class
member that is not in the contract but nearly spells one of its names (a misspelled flag:
`supports_fspd = False`) is an error at import, as is a missing member, so a plugin cannot be silently half-registered.
The contract also checks what it can of the members' types, each an error at import naming the
fix: a defense's `stage` is a `Stage` and its `Config` a dataclass; an attack's `Config` is a
dataclass with a `task` field; a judge's `data` is one of `JUDGE_DATA`; and `apply` (at the
fine-tuning stage `objective`), `run`, `score` and `build` take the arguments the pipeline passes.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # A registered class. Its contract checks its members at import and sets the flags it leaves
    # out, where a type checker cannot see them: it reads them as Any.
    Plugin = type[Any]


class Stage(str, Enum):
    """When a defense acts (the pipeline runs a composition in this order)."""

    ALIGNMENT = "alignment"  # replaces or extends safety alignment of the base model
    POST_ALIGNMENT = "post-alignment"  # edits the aligned model before release (e.g. LoX)
    FINE_TUNING = "fine-tuning"  # the provider's fine-tuning objective (fine-tuning-as-a-service)
    POST_FINE_TUNING = "post-fine-tuning"  # repairs the attacked model (e.g. Antidote)


JUDGE_DATA = ("safetyworld", "real", "any")  # the data a judge can score


def _parameters(function) -> list[str] | None:
    """The names of a method's parameters after self/cls (None where it takes *args)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return [p.name for p in parameters]


def _takes(cls: type, member: str, names: tuple[str, ...], bound: bool = True) -> str | None:
    """An error if `cls.member` cannot be called with the positional arguments `names`."""
    function = inspect.getattr_static(cls, member)
    function = getattr(function, "__func__", function)  # a classmethod's function
    if not callable(function):
        return f"{member} must be a method taking ({', '.join(names)})"
    found = _parameters(function)
    if found is None:
        return None
    required = [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    given = len(names) + (1 if bound else 0)
    positional = [n for n in found if n not in ("args", "kwargs")]
    if len(required) > given or len(positional) < given:
        return f"{member}{inspect.signature(function)} must take ({', '.join(names)}) after {'self' if bound else ''}"
    return None


def _dataclass_config(kind: str, cls: Plugin, must_have: tuple[str, ...] = ()) -> str | None:
    config = cls.Config
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return f"Config must be a dataclass (@dataclass class Config: ...), got {config!r}"
    fields = {f.name for f in dataclasses.fields(config)}
    missing = [name for name in must_have if name not in fields]
    if missing:
        return (
            f"Config {config.__name__} lacks the field(s) {', '.join(missing)} (an {kind}'s Config derives "
            "from immunity.attacks.base.AttackTask)"
        )
    return None


def _check_defense(cls: Plugin) -> list[str | None]:
    # A fine-tuning-stage defense changes no weights: it gives the loss the provider fine-tunes with.
    fine_tuning = cls.stage == Stage.FINE_TUNING
    member, names = ("objective", ("reference", "context")) if fine_tuning else ("apply", ("model", "context"))
    if not hasattr(cls, member):
        return [
            f"lacks {member} (a defense defines apply(model, context); one at the fine-tuning stage, "
            "objective(reference, context))"
        ]
    errors: list[str | None] = []
    if not isinstance(cls.stage, Stage):
        errors.append(f"stage must be a Stage ({', '.join('Stage.' + s.name for s in Stage)}), got {cls.stage!r}")
    errors.append(_dataclass_config("defense", cls))
    errors.append(_takes(cls, member, names))
    return errors


def _check_attack(cls: Plugin) -> list[str | None]:
    return [_dataclass_config("attack", cls, ("task",)), _takes(cls, "run", ("model", "tokenizer", "data", "seed"))]


def _check_judge(cls: Plugin) -> list[str | None]:
    data = getattr(cls, "data", "any")
    errors: list[str | None] = (
        [] if data in JUDGE_DATA else [f"data must be one of {', '.join(map(repr, JUDGE_DATA))}, got {data!r}"]
    )
    errors.append(_takes(cls, "score", ("records",)))
    errors.append(_takes(cls, "build", ("path", "settings", "lexicon")))
    return errors


@dataclass(frozen=True)
class Contract:
    """What a plugin of one kind must define (`required`) and may declare (`flags`, with their
    defaults, and `optional` methods or attributes a base class may provide)."""

    kind: str
    required: tuple[str, ...]
    flags: dict[str, object] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    types: Callable[[Plugin], list] = lambda cls: []  # what it can check of the members' types

    def check(self, cls: type) -> None:
        missing = [m for m in self.required if not hasattr(cls, m)]
        if missing:
            raise TypeError(
                f"{self.kind} {cls.__qualname__} lacks {', '.join(missing)} (a {self.kind} defines "
                f"{', '.join(self.required)})"
            )
        known = set(self.required) | set(self.flags) | set(self.optional) | {"name"}
        for owner in inspect.getmro(cls)[:-1]:  # the class and its bases, not `object`
            for attr in vars(owner):
                close = difflib.get_close_matches(attr, sorted(known), n=1, cutoff=0.8)
                if attr not in known and not attr.startswith("__") and close:
                    raise TypeError(
                        f"{self.kind} {cls.__qualname__}: unknown member {attr!r}; did you mean "
                        f"{close[0]!r}? (a {self.kind} may define {', '.join(sorted(known))})"
                    )
        for flag, default in self.flags.items():
            if not hasattr(cls, flag):
                setattr(cls, flag, default)
        problems = [p for p in self.types(cls) if p]
        if problems:
            raise TypeError(f"{self.kind} {cls.__qualname__}: {problems[0]}")


DEFENSE = Contract(
    "defense",
    required=("stage", "Config"),
    optional=("apply", "objective"),  # `objective` at the fine-tuning stage, `apply` at every other
    flags={"supports_fsdp": True},  # whether `fsdp=true` may shard what it trains
    types=_check_defense,
)
ATTACK = Contract(
    "attack",
    required=("Config", "run"),
    flags={
        "writes_weights": True,  # False: acts at inference time (a hook), nothing to export
        "fine_tunes": False,  # trains an adapter or the weights: what a repair repairs
        "attacker_metric": "hs",
    },  # the metric that says what the attacker reached
    optional=("label", "trains_on_task", "extra_prompt_sets", "prompt_prefill", "check_data", "steps"),
    types=_check_attack,
)
JUDGE = Contract(
    "judge",
    required=("score", "build"),
    flags={
        "needs_model": False,  # KIND:PATH_OR_ID
        "data": "any",  # "safetyworld" | "real" | "any": the data it can score
        "usage": "",
    },  # one line for help texts
    types=_check_judge,
)

DEFENSES: dict[str, Plugin] = {}
ATTACKS: dict[str, Plugin] = {}
JUDGES: dict[str, Plugin] = {}
CONTRACTS = {"defense": DEFENSE, "attack": ATTACK, "judge": JUDGE}


def _register(table: dict[str, Plugin], contract: Contract, name: str) -> Callable[[Plugin], Plugin]:
    def wrap(cls: Plugin) -> Plugin:
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


def lookup(table: dict[str, Plugin], kind: str, name: str) -> Plugin:
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(table))})")
    return table[name]
