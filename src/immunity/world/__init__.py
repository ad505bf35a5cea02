"""SafetyWorld's text: lexicon, requests and answers on disjoint splits, tokenizer. No training."""

from .config import PretrainConfig, WorldConfig, WorldModelConfig
from .generator import TASKS, Example, SplitSizes, WorldData, build_world_data, complied
from .lexicon import Lexicon
from .tokenizer import build_tokenizer

__all__ = [
    "Example",
    "Lexicon",
    "PretrainConfig",
    "SplitSizes",
    "TASKS",
    "WorldConfig",
    "WorldData",
    "WorldModelConfig",
    "build_tokenizer",
    "build_world_data",
    "complied",
]
