"""Importing this module registers every built-in defense, attack and judge: every module of
the `defenses`, `attacks` and `evaluation.judges` packages, found on disk, so a new one is one
new file. It also fixes the code versions of the loaded code (see `cache.snapshot_code`)."""

import importlib
import pkgutil

from . import attacks, defenses
from .cache import snapshot_code
from .evaluation import judges


def _import_every_module(package) -> None:
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


for _package in (defenses, attacks, judges):
    _import_every_module(_package)
snapshot_code()
