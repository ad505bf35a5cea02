"""SafetyWorld, the embedded default: its lexicon, data and tokenizer, and the cached pretrained
base model (capable, and compliant with every request)."""

from __future__ import annotations

import time
from functools import cached_property

from transformers import AutoModelForCausalLM

from .cache import cache_root, cached_model, code_version, stable_hash, write_manifest
from .data import encode_chat, encode_text
from .models import build_model, save_model
from .training import TrainConfig, train
from .world import Lexicon, WorldConfig, WorldData, build_tokenizer, build_world_data


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
        return f"pretrain-{stable_hash([self.config, seed])}-{code_version(__name__)}"

    def new_model(self, seed: int, arch: str | None = None):
        m = self.config.model
        return build_model(arch or m.arch, len(self.tokenizer), m.hidden, m.layers, m.heads,
                           m.intermediate, m.max_positions, seed, self.tokenizer)

    def pretrained_model(self, seed: int):
        """The base model, trained once per (world config, seed, code) and cached on disk."""
        return cached_model(cache_root() / self.model_key(seed), lambda: self._pretrain(seed), load_cached, save_cached)

    def _pretrain(self, seed: int):
        model = self.new_model(seed)
        p = self.config.pretrain
        cfg = TrainConfig(lr=p.lr, epochs=p.epochs, batch_size=p.batch_size, schedule=p.schedule,
                          warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay, seed=seed)
        start = time.perf_counter()
        train(model, self.pretrain_features(), cfg, self.tokenizer.pad_token_id, desc="pretrain",
              progress=self.progress)
        model.config.immunity_pretrain_seconds = round(time.perf_counter() - start, 1)
        return model


def load_cached(path):
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


def save_cached(model, path) -> None:
    save_model(model, path, before_rename=write_manifest)
