"""SafetyWorld, the embedded default: its lexicon, data and tokenizer, and its pretrained base
model (capable, and compliant with every request).

The base model is one artifact shared by every run seed, as a released model is in the papers
(seeds vary alignment, attack data and order): for the default world it ships with the package
(`assets/safetyworld-base`, with its content hash, the command that rebuilds it and where it was
built), because pretraining (1,184 steps) is where runs on different machines diverged: the
same seed pretrained with 1 and 2 threads gave different bases, and the attack's outcome
differed by up to 40 points on the same seed. After the base, alignment and the attack agree
to float precision (max weight difference 2.4e-7 between 1 and 2 threads, identical HS). Any
other world config (or `world.base_seed`) pretrains its base once and caches it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

from transformers import AutoModelForCausalLM

from .cache import PACKAGE_ROOT, cache_root, cached_model, code_version, stable_hash, write_manifest
from .data import encode_chat, encode_text
from .models import build_model, save_model
from .training import TrainConfig, train
from .world import Lexicon, WorldConfig, WorldData, build_tokenizer, build_world_data

SHIPPED_BASE = PACKAGE_ROOT / "assets" / "safetyworld-base"
BASE_CARD = "immunity-base.json"


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

    def base_hash(self) -> str:
        """What the base model is a function of: the world's content, its model's shape, its
        pretraining settings and the base seed."""
        return stable_hash(asdict(self.config))

    def shipped(self) -> bool:
        card = SHIPPED_BASE / BASE_CARD
        return card.is_file() and json.loads(card.read_text())["world_config_hash"] == self.base_hash()

    def model_key(self) -> str:
        """The base model's identity: the shipped artifact's content hash, or the pretraining's
        configuration and code."""
        if self.shipped():
            return f"shipped-{json.loads((SHIPPED_BASE / BASE_CARD).read_text())['sha256'][:16]}"
        return f"pretrain-{self.base_hash()}-{code_version(__name__)}"

    def new_model(self, seed: int, arch: str | None = None):
        m = self.config.model
        return build_model(
            arch or m.arch,
            len(self.tokenizer),
            m.hidden,
            m.layers,
            m.heads,
            m.intermediate,
            m.max_positions,
            seed,
            self.tokenizer,
        )

    def base_model(self):
        """The base model: shipped with the package for the default world (its hash checked),
        else pretrained once per (world config, code) and cached on disk."""
        if self.shipped():
            return load_shipped()
        return cached_model(cache_root() / self.model_key(), self.pretrain, load_cached, save_cached)

    def pretrain(self):
        model = self.new_model(self.config.base_seed)
        p = self.config.pretrain
        cfg = TrainConfig(
            lr=p.lr,
            epochs=p.epochs,
            batch_size=p.batch_size,
            schedule=p.schedule,
            warmup_ratio=p.warmup_ratio,
            weight_decay=p.weight_decay,
            seed=self.config.base_seed,
        )
        train(
            model, self.pretrain_features(), cfg, self.tokenizer.pad_token_id, desc="pretrain", progress=self.progress
        )
        return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_shipped():
    card = json.loads((SHIPPED_BASE / BASE_CARD).read_text())
    found = _sha256(SHIPPED_BASE / "model.safetensors")
    if found != card["sha256"]:
        raise ValueError(
            f"the shipped SafetyWorld base {SHIPPED_BASE} is altered (sha256 {found[:16]}, its card says "
            f"{card['sha256'][:16]}); reinstall the package or rebuild it with `make base`"
        )
    return AutoModelForCausalLM.from_pretrained(SHIPPED_BASE, use_safetensors=True)


def write_shipped_base(world: SafetyWorld, out: Path = SHIPPED_BASE) -> dict:
    """Pretrain the default world's base and write it as the package's artifact, with its card
    (what it is a function of, its hash, how long it took and with what)."""
    import platform

    import torch

    start = time.perf_counter()
    model = world.pretrain()
    seconds = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    card = {
        "what": "SafetyWorld's pretrained base model (compliant with every request)",
        "world_config_hash": world.base_hash(),
        "world_config": asdict(world.config),
        "sha256": _sha256(out / "model.safetensors"),
        "rebuild": "make base",
        "code_version": code_version(__name__),
        "pretrain_seconds": seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    (out / BASE_CARD).write_text(json.dumps(card, indent=1) + "\n")
    return card


def load_cached(path):
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


def save_cached(model, path) -> None:
    save_model(model, path, before_rename=write_manifest)
