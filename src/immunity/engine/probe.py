"""`immunity probe`: the mechanistic probes on a run's base, released and attacked models.

immunity probe --defense sft --seed 0 --json [probe.basin_points=11 ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from ..config import RunConfig
from ..evaluation import probes
from ..evaluation.suite import validation_metrics
from ..models import clone_model
from .pipeline import Pipeline


@dataclass
class ProbeConfig:
    prompts: int = field(default=48, metadata={"help": "harmful validation examples each probe reads"})
    positions: int = field(default=16, metadata={"help": "answer positions of the shallow-alignment KL"})
    lanczos_steps: int = field(default=20, metadata={"help": "Lanczos iterations per Hessian"})
    hessian_examples: int = field(default=16, metadata={"help": "examples in the Hessian's loss batch"})
    basin_points: int = field(default=11, metadata={"help": "points along the basin direction"})
    basin_extent: float = field(default=0.5, metadata={"help": "a in [-extent, extent] (Peng et al.: 0.5)"})
    basin_tolerance: float = field(default=0.05, metadata={"help": "HS change that ends the basin"})


def run_probes(cfg: RunConfig, probe: ProbeConfig, progress: bool = True) -> dict:
    """Drift (released -> attacked), shallow alignment (released vs base), Hessian spectra of the
    harmful and benign losses and the safety basin, all on the validation split."""
    pipeline = Pipeline(cfg, progress)
    base = pipeline.base_model()
    released = pipeline.defend(clone_model(base))
    attacked = pipeline.run_attack(released)
    data, tokenizer, device = pipeline.data, pipeline.tokenizer, pipeline.device
    harmful = data.get("harmful", "val")[:: max(1, len(data.get("harmful", "val")) // probe.prompts)][: probe.prompts]
    benign = data.benign.get("val", [])[: probe.hessian_examples]
    spectra = {
        "harmful": probes.loss_spectrum(
            released, probes._batch(tokenizer, harmful[: probe.hessian_examples], device), probe.lanczos_steps, cfg.seed
        )
    }
    if benign:
        spectra["benign"] = probes.loss_spectrum(
            released, probes._batch(tokenizer, benign, device), probe.lanczos_steps, cfg.seed
        )
    spectra["kappa"] = spectra["harmful"]["kappa"]

    def hs_of(model) -> float:
        return cast(float, validation_metrics(model, tokenizer, data, ["harmful"], pipeline.judge, probe.prompts)["hs"])

    return {
        "defense": cfg.defense,
        "seed": cfg.seed,
        "model": cfg.model,
        "judge": pipeline.judge.name,
        "drift": probes.drift(released, attacked, tokenizer, [e.prompt for e in harmful]),
        "shallow": probes.token_kl(released, base, tokenizer, [e for e in harmful if e.answer], probe.positions),
        "hessian": spectra,
        "basin": probes.basin(released, hs_of, cfg.seed, probe.basin_points, probe.basin_extent, probe.basin_tolerance),
    }
