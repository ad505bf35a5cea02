"""SafetyWorld's configuration: the world's content, its model's shape and its pretraining."""

from __future__ import annotations

from dataclasses import dataclass, field

from .generator import SplitSizes


@dataclass
class WorldModelConfig:
    arch: str = "llama"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 64


@dataclass
class PretrainConfig:
    lr: float = 3e-3
    epochs: float = 8.0
    batch_size: int = 64
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0


@dataclass
class WorldConfig:
    seed: int = 0  # content of the world (words, splits); model seeds vary separately
    base_seed: int = 0  # seeds the pretrained base model, shared by every run seed (as a released model is)
    objects_per_category: int = 30
    heldout_categories: tuple[str, ...] = ("arson", "counterfeit", "forgery", "vandalism")
    splits: SplitSizes = field(default_factory=SplitSizes)
    task_eval_size: int = 200
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
