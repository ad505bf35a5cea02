"""The released model of a chain of defenses, kept in the model cache with what its defenses noted,
the adapter they trained and what it cost (`Release`); the default alignment a run builds on; and
the cache entry's name, which names everything the release is a function of."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM

from ..cache import cache_root, code_version, stable_hash, write_manifest
from ..config import DefenseStep, RunConfig, model_track
from ..fields import build_config
from ..models import save_model
from ..models.lora import ReleasedAdapter
from ..registry import DEFENSES, lookup
from .identity import versions

RELEASE_NOTES = "immunity-release.json"


def default_alignment(cfg: RunConfig) -> DefenseStep:
    """What a run without an alignment defense builds on: `sft` at its defaults, or at the real
    track's `sft` settings where the model belongs to a track (so a post-alignment defense builds
    on the track's own `sft`)."""
    sft = lookup(DEFENSES, "defense", "sft")
    track = model_track(cfg.model)
    return DefenseStep("sft", sft, build_config(sft.Config, dict(track.defenses.get("sft", {})) if track else {}))


def release_identity(steps: list[DefenseStep], default: DefenseStep) -> tuple[str, object, list[str]]:
    """Name, settings and modules that identify the model `steps` release. The default `sft`
    under a post-alignment defense is left out of the name and settings, so `lox` and `sft+lox`
    are one cached model."""
    if len(steps) == 1:
        return steps[0].name, steps[0].config, [steps[0].cls.__module__]
    modules = [s.cls.__module__ for s in steps]
    if len(steps) == 2 and steps[0] == default:
        return steps[1].name, steps[1].config, modules
    return "+".join(s.name for s in steps), [s.config for s in steps], modules


@dataclass
class Release:
    """A defense's released model with what it noted, the adapter it trained (if any) and what
    it cost (seconds and peak resident memory, measured when it was built, kept with it in the
    cache; 0 for a release cached before peaks were kept)."""

    model: object
    notes: dict
    adapter: ReleasedAdapter | None
    seconds: float
    peak_mb: float = 0.0

    def save(self, path: Path) -> None:
        def extras(tmp: Path) -> None:
            (tmp / RELEASE_NOTES).write_text(
                json.dumps({"notes": self.notes, "seconds": self.seconds, "peak_mb": self.peak_mb}, default=str)
            )
            if self.adapter is not None:
                self.adapter.save(tmp)
            write_manifest(tmp)

        save_model(self.model, path, before_rename=extras)

    @classmethod
    def load(cls, path: Path, device) -> Release:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).to(device)
        record = json.loads((path / RELEASE_NOTES).read_text())
        return cls(model, record["notes"], ReleasedAdapter.load(path), record["seconds"], record.get("peak_mb", 0.0))


def release_path(steps: list[DefenseStep], default: DefenseStep, base: str) -> Path:
    """The cache entry of the release of `steps` on a base identified by `base`: named by the
    defenses' configs and code, the base, and the library versions (which the run id also names)."""
    name, config, modules = release_identity(steps, default)
    version = code_version(*modules, "immunity.safetyworld")
    return cache_root() / f"aligned-{name}-{stable_hash([config, base, versions()])}-{version}"
