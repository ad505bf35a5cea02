"""Defenses, one file each. Importing this package registers them."""

from . import none, sft  # noqa: F401
from .base import Defense, DefenseContext, Stage

__all__ = ["Defense", "DefenseContext", "Stage"]
