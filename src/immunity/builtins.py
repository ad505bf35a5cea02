"""Importing this module registers every built-in defense, attack and judge: the one place they
load. It also fixes the code versions of the loaded code (see `cache.snapshot_code`)."""

from . import attacks, defenses  # noqa: F401
from .cache import snapshot_code
from .evaluation import judges  # noqa: F401

snapshot_code()
