"""SafetyWorld: lexicon + data + tokenizer + the cached pretrained model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from transformers import AutoModelForCausalLM

from ..cache import cache_root, code_version, stable_hash
from ..data import encode_chat, encode_text
from ..training import TrainConfig, train
from .generator import SplitSizes, WorldData, build_world_data
from .lexicon import Lexicon
from .tokenizer import build_tokenizer


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
    objects_per_category: int = 30
    heldout_categories: tuple[str, ...] = ("arson", "counterfeit", "forgery", "vandalism")
    splits: SplitSizes = field(default_factory=SplitSizes)
    task_eval_size: int = 200
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


class SafetyWorld:
    def __init__(self, config: WorldConfig | None = None, progress: bool = True):
        self.config = config or WorldConfig()
        self.progress = progress
        self.lexicon = Lexicon(self.config.objects_per_category, self.config.seed)
        self.tokenizer = build_tokenizer(self.lexicon.all_words())

    @cached_property
    def data(self) -> WorldData:
        c = self.config
        return build_world_data(self.lexicon, c.splits, tuple(c.heldout_categories), c.task_eval_size, c.seed)

    def pretrain_features(self) -> list[dict]:
        tok = self.tokenizer
        feats = [encode_text(tok, t) for t in self.data.pretrain_texts]
        for ex in self.data.pretrain_chats:  # loss on every token, as in pretraining
            f = encode_chat(tok, ex.prompt, ex.answer)
            feats.append({"input_ids": f["input_ids"], "labels": list(f["input_ids"])})
        return feats

    def model_key(self, seed: int) -> str:
        c = self.config
        return f"pretrain-{stable_hash([c, seed])}-{code_version('world', 'training', 'data', 'models')}"

    def new_model(self, seed: int, arch: str | None = None):
        from ..models import build_model

        m = self.config.model
        return build_model(arch or m.arch, len(self.tokenizer), m.hidden, m.layers, m.heads,
                           m.intermediate, m.max_positions, seed, self.tokenizer)

    def pretrained_model(self, seed: int):
        """The base model: capable and compliant with every request. Cached on disk."""
        path = cache_root() / self.model_key(seed)
        if (path / "model.safetensors").exists():
            return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        model = self.new_model(seed)
        p = self.config.pretrain
        cfg = TrainConfig(lr=p.lr, epochs=p.epochs, batch_size=p.batch_size, schedule=p.schedule,
                          warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay, seed=seed)
        start = time.perf_counter()
        train(model, self.pretrain_features(), cfg, self.tokenizer.pad_token_id, desc="pretrain",
              progress=self.progress)
        model.config.immunity_pretrain_seconds = round(time.perf_counter() - start, 1)
        save_model(model, path)
        return model


def save_model(model, path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(path) if not path.exists() else None


def clone_model(model):
    """An independent copy (defenses and attacks must not touch a cached model)."""
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    copy.generation_config = model.generation_config
    return copy.eval()


