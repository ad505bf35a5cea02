"""Importing this module registers every built-in defense, attack and judge: the one place they load."""

from . import attacks, defenses  # noqa: F401
from .evaluation import judges  # noqa: F401
