"""Defenses, one file each. Importing this package registers them."""

from . import (  # noqa: F401
    antidote, antidote_hypernet, booster, circuit_breakers, condition_number, et, ilu, lapt, lox, mlac, none, ntl,
    repnoise, scratch, sft, sophon, t_vaccine, tar, vaccine,
)
from .base import Defense, DefenseContext, Stage

__all__ = ["Defense", "DefenseContext", "Stage"]
