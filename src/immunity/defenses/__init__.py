"""Defenses, one file each (`immunity.builtins` imports and so registers them all)."""

from .base import Defense, DefenseContext, Stage

__all__ = ["Defense", "DefenseContext", "Stage"]
