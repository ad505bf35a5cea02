"""The stages as Python functions: `defend`, `attack`, `evaluate` (the CLI commands of the same
names call these).

    import immunity
    released = immunity.defend("path/to/model", "booster", data=["beavertails:bt.jsonl"], out="released",
                               settings={"defense.epochs": 1})
    attacked = immunity.attack(released, data=["beavertails:bt.jsonl"], task="sst2:sst2.jsonl", out="attacked")
    scores = immunity.evaluate(attacked, data=["beavertails:bt.jsonl"], task="sst2:sst2.jsonl",
                               judge="classifier:path/to/moderation-model")

`model` is "safetyworld" (the built-in world's pretrained model), a local Hugging Face
directory or a hub id (downloaded only because it is named). `data` are data sources
(`immunity.data.sources`); none means SafetyWorld's. `settings` are the `key=value` settings of
`immunity list --keys` (`defense.*`, `attack.*`, `eval.*`, ...).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .bench.export import write_release
from .bench.identity import versions
from .bench.pipeline import Pipeline, quiet_transformers
from .config import ConfigError, RunConfig, chain_config, load_run_config, validate
from .defenses.base import Stage
from .models import clone_model, load_model
from .training import parallel


def _config(model: str, defense: str, data, task, seed: int, settings: dict | None, judge: str | None = None,
            need_task: bool = False, need_judge: bool = False):
    overrides = [f"{k}={v}" for k, v in (settings or {}).items()]
    fixed = {"model": str(model), "defense": defense, "seed": seed, "data": list(data) if data else None,
             "task_data": task, "eval.judge": judge}
    cfg = load_run_config(None, overrides, **{k: v for k, v in fixed.items() if v is not None})
    validate(cfg, need_task, need_judge)
    return cfg


def _provenance(pipeline: Pipeline, cfg: RunConfig, stage: str, command: str) -> dict:
    resolved = pipeline.identity.resolved
    return {"stage": stage, "command": command, "model": cfg.model, "model_weights": resolved.get("model_weights"),
            "seed": cfg.seed, "data": pipeline.data.name, "data_hashes": pipeline.data.hashes(),
            "versions": versions(), "code_version": pipeline.identity.code_version, "config": resolved}


def _defend(model: str = "safetyworld", defense: str = "sft", *, data: list[str] | None = None, out: str | None = None,
           seed: int = 0, settings: dict | None = None, base_model: str | None = None, adapter_only: bool = False,
           judge: str | None = None, progress: bool = True) -> str | object:
    """Apply `defense` to `model` at the defense's stage and, with `out`, write the released model
    (returns its directory; without `out`, the model). Alignment-stage defenses align `model`;
    post-alignment ones (LoX, SOPHON, TAR, Circuit Breakers) take `model` as the aligned model
    (LoX also needs `base_model`, the model before alignment); a post-fine-tuning defense
    (Antidote) repairs `model` as an attacked one (an adapter directory keeps the attack's
    adapter separate, which is what Antidote prunes). A composition (`"booster+lox"`) applies its
    defenses in stage order, each to what the one before released (LoX's model before alignment
    is then `model` itself); a repair cannot be composed here. With `judge`, the released model is also
    evaluated and the numbers go into its model card. Under torchrun / accelerate launch the
    defense trains data-parallel and only the first process writes (the others return None)."""
    cfg = _config(model, defense, data, None, seed, settings, judge, need_judge=judge is not None)
    pipeline = Pipeline(cfg, progress)
    chain = pipeline.chain
    if len(chain) > 1 and pipeline.repairs():
        raise ConfigError(f"defend {defense}: {pipeline.repairs()[0].name} repairs an attacked model; compose it "
                          "in a run (immunity run / bench), or defend the attacked model with it alone")
    start = pipeline.base_model()
    before = None
    if base_model is not None:
        before, _ = load_model(base_model, dtype=cfg.model_dtype)
        before = before.to(pipeline.device)
    elif len(chain) > 1 and chain[0].cls.stage == Stage.ALIGNMENT:
        before = clone_model(start)  # what the later defenses see as the model before alignment
    released, notes = start, {}
    with parallel.data_parallel(cfg.micro_batches, cfg.fsdp):
        for step in chain:
            context = pipeline.context(before)
            released = step.cls(step.config).apply(released, context)
            notes |= {step.name: context.notes} if len(chain) > 1 else context.notes
    if out is None:
        return released
    if not parallel.is_main():  # data-parallel: the first process evaluates and writes
        return None
    provenance = _provenance(pipeline, cfg, "defend", f"defend --defense {defense}") | {
        "defense": defense, "defense_stage": "+".join(step.cls.stage.value for step in chain),
        "defense_config": chain_config(chain), "defense_notes": notes}
    if judge:
        provenance["evaluation"] = _metrics(pipeline, released, f"defend-{defense}")
    return str(write_release(released, pipeline.tokenizer, Path(out), provenance, adapter_only))


def _attack(model: str, *, data: list[str] | None = None, task: str | None = None, out: str | None = None,
           seed: int = 0, settings: dict | None = None, adapter_only: bool = False, progress: bool = True):
    """The harmful fine-tuning attack on `model` (settings `attack.*`); with `out`, written as a
    model directory (`adapter_only`: the attack's LoRA adapter alone, for a later repair)."""
    cfg = _config(model, "none", data, task, seed, settings, need_task=True)
    pipeline = Pipeline(cfg, progress)
    if out is not None and not pipeline.attack.writes_weights:
        raise ValueError(f"attack={cfg.attack_name} acts at inference time (a hook, not weights): there is no "
                         "attacked model to write; evaluate it with `immunity run` instead")
    with parallel.data_parallel(cfg.micro_batches, cfg.fsdp):
        attacked = pipeline.attack.run(pipeline.base_model(), pipeline.tokenizer, pipeline.data,
                                                       cfg.seed, progress=progress, merge=not adapter_only)
    if out is None:
        return attacked
    if not parallel.is_main():
        return None
    provenance = _provenance(pipeline, cfg, "attack", "attack") | {"attack_config": asdict(cfg.attack)}
    return str(write_release(attacked, pipeline.tokenizer, Path(out), provenance, adapter_only))


def _metrics(pipeline: Pipeline, model, tag: str) -> dict:
    task = pipeline.cfg.attack.task
    sets = ["harmful", "heldout", "benign"] + ([f"task:{task}"] if task in pipeline.data.tasks else [])
    metrics = pipeline.evaluate(model, sets, tag)
    fa = metrics.pop(f"fa_{pipeline.cfg.attack.task}", None)
    return {"judge": pipeline.judge.name, "hs": metrics.pop("hs", None), "fa": fa, **metrics}


def _evaluate(model: str, *, data: list[str] | None = None, task: str | None = None, judge: str | None = None,
             seed: int = 0, settings: dict | None = None, progress: bool = True) -> dict:
    """HS, FA, helpfulness and refusal rates of `model` and the judge that produced them;
    generations (and the judge's verdicts) are saved under `out_dir` first."""
    cfg = _config(model, "none", data, task, seed, settings, judge, need_judge=True)
    pipeline = Pipeline(cfg, progress)
    return _metrics(pipeline, pipeline.base_model(), "evaluate") | {
        "model": cfg.model, "data": pipeline.data.name, "split": cfg.eval.split, "seed": seed,
        "task": cfg.attack.task}


def defend(*args, progress: bool = True, **kwargs):
    with quiet_transformers(not progress):
        return _defend(*args, progress=progress, **kwargs)


def attack(*args, progress: bool = True, **kwargs):
    with quiet_transformers(not progress):
        return _attack(*args, progress=progress, **kwargs)


def evaluate(*args, progress: bool = True, **kwargs):
    with quiet_transformers(not progress):
        return _evaluate(*args, progress=progress, **kwargs)


defend.__doc__, attack.__doc__, evaluate.__doc__ = _defend.__doc__, _attack.__doc__, _evaluate.__doc__
__all__ = ["Stage", "attack", "defend", "evaluate"]
