"""`sft`: standard safety alignment by supervised fine-tuning (the field's baseline).

Stage: alignment. Data: refusals on the harmful `align` requests and helpful answers on the
benign `align` requests. Update: minimise cross-entropy on answer tokens (prompt masked).
Defaults: LoRA alignment merged into the weights, as in the Vaccine/Booster papers (their
r = 8/32 on a 7B model; r = 16, alpha = 32 here); lr, epochs and rank chosen on SafetyWorld's
validation split so that refusal generalises to unseen requests and held-out categories while
benign helpfulness stays (docs/safetyworld.md). Full-parameter alignment (`mode=full`, 3 epochs
at lr 1e-3) saturated refusal and made the world break as a cliff; see the same document.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import attach_lora, merge_lora
from ..registry import register_defense
from ..training import TrainConfig, train
from .base import DefenseContext, Stage


@dataclass
class SFTConfig:
    mode: str = field(default="lora", metadata={"help": "lora (merged after training) | full"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the alignment data"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    schedule: str = field(default="cosine", metadata={"help": "constant | linear | cosine"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps warming up"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (mode=lora)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (mode=lora)"})

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise ValueError(f"sft.mode must be 'full' or 'lora', got {self.mode!r}")


@register_defense("sft")
class SFT:
    stage = Stage.ALIGNMENT
    Config = SFTConfig

    def __init__(self, config: SFTConfig):
        self.config = config

    def apply(self, model, context: DefenseContext):
        c = self.config
        if c.mode == "lora":
            model = attach_lora(model, c.lora_r, c.lora_alpha)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, schedule=c.schedule,
                          warmup_ratio=c.warmup_ratio, seed=context.seed)
        train(model, context.encode(context.alignment_examples()), cfg, context.tokenizer.pad_token_id,
              desc="align (sft)", progress=context.progress)
        return merge_lora(model)
