from .generator import Example, SplitSizes, WorldData
from .lexicon import Lexicon
from .tokenizer import build_tokenizer
from .world import PretrainConfig, SafetyWorld, WorldConfig, WorldModelConfig, clone_model, save_model

__all__ = ["Example", "Lexicon", "PretrainConfig", "SafetyWorld", "SplitSizes", "WorldConfig",
           "WorldData", "WorldModelConfig", "build_tokenizer", "clone_model", "save_model"]
