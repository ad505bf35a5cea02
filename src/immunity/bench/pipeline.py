"""base -> defense (at its stage) -> attack -> evaluate, with timings and peak memory per stage.

Defenses whose stage is not `alignment` build on standard `sft` alignment, as in their papers
(LoX extrapolates an aligned model; Antidote repairs an attacked aligned model).
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from ..cache import cache_root, code_version, stable_hash
from ..config import RunConfig, build_config
from ..defenses.base import DefenseContext, Stage
from ..evaluation.suite import generate_sets, prompt_sets, score
from ..models import load_model
from ..registry import ATTACKS, DEFENSES, JUDGES, lookup
from ..world import SafetyWorld, clone_model, save_model


def versions() -> dict[str, str]:
    import accelerate
    import peft

    from .. import __version__

    return {"immunity": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__}


def config_hash(cfg: RunConfig) -> str:
    return stable_hash(asdict(cfg) | {"out_dir": None})


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (CUDA: peak allocated on the device)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.peak_mb[name] = round(peak_memory_mb(), 1)


class Pipeline:
    """One run: everything a result needs, built from a `RunConfig`."""

    def __init__(self, cfg: RunConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        if not progress:
            transformers.utils.logging.disable_progress_bar()  # weight loading/saving bars
        self.world = SafetyWorld(cfg.world, progress=progress)
        self.defense_cls = lookup(DEFENSES, "defense", cfg.defense)
        self.defense_config = build_config(self.defense_cls.Config, cfg.defense_args)
        self.attack_cls = lookup(ATTACKS, "attack", cfg.attack_name)
        self.judge = lookup(JUDGES, "judge", cfg.eval.judge)(self.world.lexicon)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.clock = StageClock()
        self.tokenizer = self.world.tokenizer
        self.defense_seconds = 0.0  # the defense's own cost (alignment measured even when cached)

    # -- stages ---------------------------------------------------------------------------
    def base_model(self):
        if self.cfg.model == "safetyworld":
            return self.world.pretrained_model(self.cfg.seed)
        model, self.tokenizer = load_model(self.cfg.model, trust_remote_code=self.cfg.trust_remote_code)
        return model

    def context(self, base_model=None) -> DefenseContext:
        return DefenseContext(self.tokenizer, self.world.data, self.cfg.seed, self.progress, base_model)

    def _aligned_cache_path(self, name: str, config) -> Path | None:
        if self.cfg.model != "safetyworld":
            return None  # only the built-in base model has a stable key
        deps = code_version("defenses", "training", "data", "models", "world")
        return cache_root() / (f"aligned-{name}-{stable_hash([config, self.world.model_key(self.cfg.seed)])}"
                               f"-{deps}")

    def cached(self, name: str, config, build):
        """`build()` a released model, cached on disk for the built-in world; its cost is kept
        with it, so a run that reuses it still reports what it cost."""
        path = self._aligned_cache_path(name, config)
        if path is not None and (path / "model.safetensors").exists():
            return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).to(self.device)
        start = time.perf_counter()
        model = build()
        model.config.immunity_align_seconds = round(time.perf_counter() - start, 2)
        if path is not None:
            save_model(model, path)
        return model

    def align(self, base, defense_cls, defense_config):
        """Run an alignment-stage defense on a copy of the base model."""
        return self.cached(defense_cls.name, defense_config,
                           lambda: defense_cls(defense_config).apply(clone_model(base).to(self.device), self.context()))

    def defend(self, base):
        """The released model: the defense at its stage (or `sft` under a later-stage defense)."""
        if self.defense_cls.stage == Stage.ALIGNMENT:
            model = self.align(base, self.defense_cls, self.defense_config)
        else:
            sft = lookup(DEFENSES, "defense", "sft")
            aligned = self.align(base, sft, sft.Config())
            if self.defense_cls.stage == Stage.POST_FINE_TUNING:
                return aligned  # the defense runs after the attack
            model = self.cached(self.defense_cls.name, self.defense_config,
                                lambda: self.defense_cls(self.defense_config).apply(aligned, self.context(base)))
        self.defense_seconds = getattr(model.config, "immunity_align_seconds", 0.0)
        return model

    def attack(self, model):
        attack = self.attack_cls(self.cfg.attack)
        return attack.run(clone_model(model).to(self.device), self.tokenizer, self.world.data,
                          self.cfg.seed, progress=self.progress)

    def evaluate(self, model, sets: list[str], tag: str) -> dict[str, float]:
        e = self.cfg.eval
        path = Path(self.cfg.out_dir) / f"{self.cfg.defense}-seed{self.cfg.seed}-{config_hash(self.cfg)}" \
            / f"generations_{tag}.jsonl"
        records = generate_sets(model, self.tokenizer, prompt_sets(self.world.data, sets, e.split, e.max_prompts),
                                e.max_new_tokens, e.batch_size, path, self.progress)
        return score(records, self.judge)

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> dict:
        cfg, clock = self.cfg, self.clock
        task = f"task:{cfg.attack.task}"
        with clock.stage("base"):
            base = self.base_model().to(self.device)
        with clock.stage("defend"):
            released = self.defend(base)
        with clock.stage("eval_before"):
            before = self.evaluate(released, ["harmful", "heldout", "benign", task], "before")
        with clock.stage("attack"):
            attacked = self.attack(released)
        if self.defense_cls.stage == Stage.POST_FINE_TUNING:
            with clock.stage("repair"):
                attacked = self.defense_cls(self.defense_config).apply(attacked, self.context())
            self.defense_seconds = clock.seconds["repair"]
        with clock.stage("eval_after"):
            after = self.evaluate(attacked, ["harmful", "heldout", "benign", task], "after")
        fa = f"fa_{cfg.attack.task}"
        return {
            "defense": cfg.defense, "attack": cfg.attack_name, "seed": cfg.seed, "model": cfg.model,
            "judge": self.judge.name, "split": cfg.eval.split, "config_hash": config_hash(cfg),
            "hs_before": before["hs"], "capability_before": before.get("capability_harmful"),
            "helpful_before": before["helpful"], "hs_heldout_before": before["hs_heldout"],
            "fa_before": before[fa],
            "hs_after": after["hs"], "capability_after": after.get("capability_harmful"),
            "fa_after": after[fa], "helpful_after": after["helpful"],
            "hs_heldout_after": after["hs_heldout"],
            "attack_config": asdict(cfg.attack), "defense_config": asdict(self.defense_config),
            "timings": clock.seconds, "defense_seconds": self.defense_seconds,
            # What a defense decided while running (e.g. LoX's searched rank, SOPHON's early stop).
            "defense_notes": getattr(released.config, "immunity_notes", {}),
            "peak_memory_mb": clock.peak_mb, "versions": versions(),
        }


def run(cfg: RunConfig, progress: bool = True) -> dict:
    return Pipeline(cfg, progress).run()
