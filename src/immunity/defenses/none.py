"""`none`: no safety alignment; the pretrained base model is released as is."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_defense
from .base import Defense, DefenseContext, Stage


@dataclass
class NoneConfig:
    pass


@register_defense("none")
class NoDefense(Defense):
    stage = Stage.ALIGNMENT
    Config = NoneConfig

    def apply(self, model, context: DefenseContext):
        return model
