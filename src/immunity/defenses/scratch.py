"""`scratch`: the from-scratch reference (not a defense): a randomly initialised model of the
same architecture, which the attack then trains like any released model.

MLAC (Henderson et al. 2023) calls a defense successful when its "sample-efficiency regret" is
at most zero: the attacker, with the same data and budget, does no better from the defended
weights than from random ones. `immunity report` pairs every method with this reference on the
same seed and attack: harmful capability (column "capability over scratch") and, with
`--regret`, MLAC's regret in harmful answer NLL over the attacker's n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from ..registry import register_defense
from .base import Defense, DefenseContext, Stage


@dataclass
class ScratchConfig:
    pass


@register_defense("scratch")
class Scratch(Defense):
    stage = Stage.ALIGNMENT
    Config = ScratchConfig

    def apply(self, model, context: DefenseContext):
        with torch.random.fork_rng(devices=[]):  # the init from the seed alone; the global generator untouched
            torch.manual_seed(context.seed)
            fresh = AutoModelForCausalLM.from_config(model.config)
        fresh.generation_config = model.generation_config
        return fresh.to(next(model.parameters()).device)
