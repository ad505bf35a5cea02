"""Defenses, one file each. Importing this package registers them."""

from . import antidote, booster, circuit_breakers, none, repnoise, sft, t_vaccine, vaccine  # noqa: F401
from .base import Defense, DefenseContext, Stage

__all__ = ["Defense", "DefenseContext", "Stage"]
