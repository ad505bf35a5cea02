"""Typed dataclasses from flat `key=value` settings: the machinery every config uses (run
configs, defense and attack configs, probe and search settings), at the bottom layer so any
plugin can build its own config strictly.

    build_config(MyConfig, {"lr": "1e-3", "inner.steps": "4"})

Values are converted to the field's type (strings from the command line, scalars from YAML);
an unknown key fails with a "did you mean"; `__post_init__` checks run again after the keys are
set (dataclasses validate only on construction).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    pass


def unknown_key(key: str, choices) -> ConfigError:
    close = difflib.get_close_matches(key, list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _number(value: Any, hint: type, key: str):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError as err:
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}") from err
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite {hint.__name__}, got {value!r}")
    if hint is int and not float(number).is_integer():
        raise ConfigError(f"{key}: expected int, got {value!r}")
    return hint(number)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` (a CLI string or a YAML scalar/list) as the field's type, or a ConfigError."""
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a comma-separated list, got {value!r}")
        element = next(a for a in typing.get_args(hint) if a is not Ellipsis)
        return tuple(coerce(v, element, key) for v in items if v != "")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if hint in (int, float):
        return _number(value, hint, key)
    if hint is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


# A hook for keys a config class handles itself: (obj, head, rest, value) -> True if handled.
Special = Callable[[Any, str, str, Any], bool]


def set_key(obj: Any, dotted: str, value: Any, prefix: str = "", special: Special | None = None) -> None:
    """Set `a.b.c` on nested dataclasses, converting strings to the field's type."""
    head, _, rest = dotted.partition(".")
    if special is not None and special(obj, head, rest, value):
        return
    fields = {f.name for f in dataclasses.fields(obj)}
    current = getattr(obj, head, None) if head in fields else None
    if head not in fields or (rest and not dataclasses.is_dataclass(current)):
        raise unknown_key(prefix + dotted, all_keys(type(obj), prefix))
    if rest:
        set_key(current, rest, value, prefix + head + ".", special)
    elif dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{prefix + dotted}: expected a mapping")
        for k, v in value.items():
            set_key(current, k, v, prefix + head + ".", special)
    else:
        setattr(obj, head, coerce(value, typing.get_type_hints(type(obj))[head], prefix + dotted))


def all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def build_config(cls: type, values: dict | None = None, special: Special | None = None, first: tuple = ()):
    """Instantiate dataclass `cls` from a flat {dotted key: value} mapping, strictly; keys in
    `first` are set before the others (a key that decides which other keys exist)."""
    obj = cls()
    for key, value in sorted((values or {}).items(), key=lambda item: item[0] not in first):
        set_key(obj, key, value, special=special)
    try:
        return revalidate(obj)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


def revalidate(obj):
    """Run the `__post_init__` checks of `obj` and its nested configs again."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            revalidate(child)
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()
    return obj


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """One line per key with its default and help text (for `immunity list --keys`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines += help_lines(hints[f.name], prefix + f.name + ".")
        else:
            lines.append(f"{prefix}{f.name} = {getattr(default, f.name)!r}  {f.metadata.get('help', '')}".rstrip())
    return lines


def flatten(mapping: dict, prefix: str = "", keep: tuple = ()) -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; keys in `keep` stay mappings."""
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and k not in keep:
            out.update(flatten(v, prefix + k + ".", keep))
        else:
            out[prefix + k] = v
    return out
