"""`sft`: standard safety alignment by supervised fine-tuning (the field's baseline).

Stage: alignment. Data: refusals on the harmful `align` requests and helpful answers on the
benign `align` requests. Update: minimise cross-entropy on answer tokens (prompt masked).
Defaults: LoRA alignment merged into the weights, as in the Vaccine/Booster papers (their
r = 8/32 on a 7B model; r = 16, alpha = 32 here); lr, epochs and rank chosen on SafetyWorld's
validation split so that refusal generalises to unseen requests and held-out categories while
benign helpfulness stays (docs/history/safetyworld.md). Full-parameter alignment (`mode=full`, 3 epochs
at lr 1e-3) saturated refusal and made the world break as a cliff; see the same document.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_defense
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class SFTConfig(AlignmentTraining):
    pass


@register_defense("sft")
class SFT(Defense):
    stage = Stage.ALIGNMENT
    Config = SFTConfig

    def apply(self, model, context: DefenseContext):
        return align_with(model, context, self.config, desc="align (sft)")
