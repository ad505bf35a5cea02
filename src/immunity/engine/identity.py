"""A run's identity, computed once and carried: the resolved, typed configuration, its hash, the
code version of every package module the run executes, the package versions, and the run id
made of them. The store never serves a result whose identity differs from the current one.

A local model is identified by the content of its weights (replaced weights at the same path are
another run), real data by the content of its splits, a local judge model by its weights;
`out_dir` and how a run is spread over processes do not change results (except that shards of a
step change batch-coupled losses, so they are part of the identity when there is more than one).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from ..cache import code_version, stable_hash, weights_digest
from ..config import RunConfig, chain_config
from ..data.sources import cached_bundle
from ..defenses.base import Stage
from ..registry import ATTACKS, DEFENSES, JUDGES, lookup
from ..training.parallel import world_size


def versions() -> dict[str, str]:
    import accelerate
    import peft

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def resolved_config(cfg: RunConfig) -> dict:
    """The run's configuration with the defenses' configs built and typed (so `rho=5`, `rho=5.0`
    and YAML `rho: 5` are one value) and the content hashes of what it reads from disk."""
    resolved = {
        k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "defense_args", "micro_batches", "fsdp", "force")
    } | {"defense_config": chain_config(cfg.chain)}
    if world_size() * cfg.micro_batches > 1:  # shards of a step change batch-coupled losses
        resolved["parallel"] = {"processes": world_size(), "micro_batches": cfg.micro_batches, "fsdp": cfg.fsdp}
    if cfg.model != "safetyworld" and Path(cfg.model).is_dir():
        resolved["model_weights"] = weights_digest(Path(cfg.model))  # adapter directories: their adapter
    if cfg.data:
        resolved["data_hashes"] = cached_bundle(tuple(cfg.data), cfg.task_data or None, cfg.data_seed).hashes()
    judge_path = Path(cfg.eval.judge.partition(":")[2]).expanduser()
    if cfg.eval.judge.partition(":")[2] and judge_path.is_dir():
        resolved["judge_weights"] = weights_digest(judge_path)
    return resolved


def run_code_version(defense: str, attack: str, judge: str) -> str:
    """Version of the code a run executes: the pipeline and what it imports, the defenses',
    attack's and judge's modules (and `sft`'s, which later-stage defenses build on)."""
    defenses = [lookup(DEFENSES, "defense", name) for name in defense.split("+")]
    modules = [
        "immunity.engine.pipeline",
        *(d.__module__ for d in defenses),
        lookup(ATTACKS, "attack", attack).__module__,
    ]
    if judge != "auto":  # auto with real data: no judge named, nothing judged
        modules.append(lookup(JUDGES, "judge", judge.split(":")[0]).__module__)
    if defenses[0].stage != Stage.ALIGNMENT:
        modules.append(lookup(DEFENSES, "defense", "sft").__module__)
    return code_version(*modules)


@dataclass(frozen=True)
class RunIdentity:
    resolved: dict
    config_hash: str
    code_version: str
    versions: dict
    run_id: str

    @classmethod
    def of(cls, cfg: RunConfig) -> RunIdentity:
        resolved = resolved_config(cfg)
        key: dict[str, Any] = {
            "config_hash": stable_hash(resolved),
            "code_version": run_code_version(cfg.defense, cfg.attack_name, cfg.eval.judge),
            "versions": versions(),
        }
        return cls(resolved, **key, run_id=stable_hash(key))

    def key(self) -> dict:
        """What a result carries of its identity."""
        return {
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "versions": self.versions,
            "run_id": self.run_id,
        }
