"""base -> defense (at its stage) -> attack -> evaluate, with timings and peak memory per stage.

Defenses whose stage is not `alignment` build on standard `sft` alignment, as in their papers
(LoX extrapolates an aligned model; Antidote repairs an attacked aligned model). A composition
(`booster+lox+antidote`) runs its defenses in stage order: the alignment defense (or `sft`), each
post-alignment defense on what the one before released, the attack, then the repair.

Under torchrun / accelerate launch, every process trains the defense and the attack together
(`training.parallel`); the first builds the base model first, and alone evaluates and returns
the result. Data-parallel released models are not cached (they differ from one process's).

A run is identified by its key: the resolved, typed configuration (defense and attack configs
built, floats normalised), the code version of every package module the run executes, and the
package versions. The store never serves a result whose key differs from the current one.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from .. import builtins  # noqa: F401  (registers the built-in defenses, attacks and judges)
from ..cache import cache_root, cached_model, code_version, stable_hash, weights_digest, write_manifest
from ..config import DefenseStep, RunConfig, chain_config, defense_chain
from ..data import from_world
from ..data.sources import cached_bundle
from ..defenses.base import DefenseContext, Stage
from ..evaluation.judges import make_judge
from ..evaluation.suite import answer_nll, generate_sets, prompt_sets, score, verdict_path
from ..models import clone_model, load_model, save_model
from ..registry import ATTACKS, DEFENSES, JUDGES, lookup
from ..safetyworld import SafetyWorld
from ..training import parallel
from ..training.parallel import world_size


def versions() -> dict[str, str]:
    import accelerate
    import peft

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__}


def resolved_config(cfg: RunConfig) -> dict:
    """The run's configuration with the defense's own config built and typed (so `rho=5`,
    `rho=5.0` and YAML `rho: 5` are one value), a local model identified by the content of its
    weights (replaced weights at the same path are another run) and real data by the content
    of its splits; `out_dir` does not change results."""
    resolved = {k: v for k, v in asdict(cfg).items()
                if k not in ("out_dir", "defense_args", "micro_batches", "fsdp")} | {
        "defense_config": chain_config(defense_chain(cfg.defense, cfg.defense_args))}
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


def config_hash(cfg: RunConfig) -> str:
    return stable_hash(resolved_config(cfg))


def run_code_version(defense: str, attack: str, judge: str) -> str:
    """Version of the code a run executes: the pipeline and what it imports, the defenses',
    attack's and judge's modules (and `sft`'s, which later-stage defenses build on)."""
    defenses = [lookup(DEFENSES, "defense", name) for name in defense.split("+")]
    modules = [__name__, *(d.__module__ for d in defenses), lookup(ATTACKS, "attack", attack).__module__]
    if judge != "auto":  # auto with real data: no judge named, nothing judged
        modules.append(lookup(JUDGES, "judge", judge.split(":")[0]).__module__)
    if defenses[0].stage != Stage.ALIGNMENT:
        modules.append(lookup(DEFENSES, "defense", "sft").__module__)
    return code_version(*modules)


def default_alignment() -> DefenseStep:
    """What a run without an alignment defense builds on: `sft` at its defaults."""
    sft = lookup(DEFENSES, "defense", "sft")
    return DefenseStep("sft", sft, sft.Config())


def release_identity(steps: list[DefenseStep]) -> tuple[str, object, list[str]]:
    """Name, settings and modules that identify the model `steps` release. The default `sft`
    under a post-alignment defense is left out of the name and settings, so `lox` and `sft+lox`
    are one cached model (as they were before compositions existed)."""
    if len(steps) == 1:
        return steps[0].name, steps[0].config, [steps[0].cls.__module__]
    modules = [s.cls.__module__ for s in steps]
    if len(steps) == 2 and steps[0] == default_alignment():
        return steps[1].name, steps[1].config, modules
    return "+".join(s.name for s in steps), [s.config for s in steps], modules


def run_key(cfg: RunConfig) -> dict[str, object]:
    key = {"config_hash": config_hash(cfg), "code_version": run_code_version(cfg.defense, cfg.attack_name,
                                                                              cfg.eval.judge),
           "versions": versions()}
    return key | {"run_id": stable_hash(key)}


def run_dir(cfg: RunConfig, run_id: str) -> Path:
    """Where a run writes its generations (and, under a launcher, its result)."""
    return Path(cfg.out_dir) / f"{cfg.defense}-seed{cfg.seed}-{run_id}"


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


@contextmanager
def quiet_transformers(quiet: bool):
    """Hide transformers' own progress bars for the duration, then restore them."""
    utils = transformers.utils.logging
    was_enabled = utils.is_progress_bar_enabled()
    if quiet:
        utils.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            utils.enable_progress_bar()


class Pipeline:
    """One run: everything a result needs, built from a `RunConfig`."""

    def __init__(self, cfg: RunConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress and parallel.is_main()  # one set of progress bars, from the first process
        needs_world = cfg.model == "safetyworld" or not cfg.data
        with parallel.main_first():  # rank 0 builds and caches, the other ranks read
            self.world = SafetyWorld(cfg.world, progress=progress) if needs_world else None
        self.chain = defense_chain(cfg.defense, cfg.defense_args)
        self.attack_cls = lookup(ATTACKS, "attack", cfg.attack_name)
        self.key = run_key(cfg)  # taken now, from the code this process loaded
        self.device = parallel.device()
        self.clock = StageClock()
        self.tokenizer = self.world.tokenizer if self.world else None
        self.data = cached_bundle(tuple(cfg.data), cfg.task_data or None, cfg.data_seed) if cfg.data \
            else from_world(self.world.data)
        self._judge = None
        self.defense_seconds = 0.0  # the defenses' own cost (alignment measured even when cached)
        self.notes: dict = {}  # what the defenses decided or measured

    @property
    def judge(self):
        """Made on first use (a model-based judge loads its model then)."""
        if self._judge is None:
            lexicon = self.world.lexicon if self.world and not self.cfg.data else None
            self._judge = make_judge(self.cfg.eval.judge, self.cfg.eval.judge_settings(), lexicon)
        return self._judge

    # -- stages ---------------------------------------------------------------------------
    def base_model(self):
        """The model the run starts from, on the run's device (or spread by `device_map`)."""
        cfg = self.cfg
        if cfg.model == "safetyworld":
            with parallel.main_first():
                return self.world.pretrained_model(cfg.seed).to(self.device)
        model, self.tokenizer = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, dtype=cfg.model_dtype,
                                           device_map=cfg.device_map, quantization=cfg.quantization)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()  # so adapters on a frozen base still get gradients
        return model if cfg.device_map else model.to(self.device)

    def context(self, base_model=None) -> DefenseContext:
        judge = None if self.cfg.eval.judge == "auto" else (lambda: self.judge)
        return DefenseContext(self.tokenizer, self.data, self.cfg.seed, self.progress, base_model, judge)

    def cached(self, steps: list[DefenseStep], build):
        """`build()` the model the defenses `steps` release, cached on disk for the built-in
        world, keyed by their configs and code; its cost is kept with it, so a run that reuses
        it still reports what it cost."""
        def timed():
            start = time.perf_counter()
            model = build()
            model.config.immunity_align_seconds = round(time.perf_counter() - start, 2)
            return model

        if self.cfg.model != "safetyworld" or parallel.shard_count() > 1:
            return timed()  # only the built-in base model has a stable key; data-parallel builds differ
        name, config, modules = release_identity(steps)
        version = code_version(*modules, "immunity.safetyworld")
        path = cache_root() / (f"aligned-{name}-{stable_hash([config, self.world.model_key(self.cfg.seed)])}"
                               f"-{version}")
        return cached_model(path, timed, self._load, lambda m, p: save_model(m, p, before_rename=write_manifest))

    def _load(self, path):
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).to(self.device)

    def defend(self, base):
        """The released model: the alignment defense (`sft` when the run names none) on a copy
        of the base model, then each post-alignment defense on what the one before released."""
        steps = [s for s in self.chain if s.cls.stage != Stage.POST_FINE_TUNING]
        if not steps or steps[0].cls.stage != Stage.ALIGNMENT:
            steps = [default_alignment(), *steps]
        model = None
        for i, step in enumerate(steps):
            def build(step=step, upstream=model):
                if upstream is None:
                    return step.cls(step.config).apply(clone_model(base), self.context())
                return step.cls(step.config).apply(upstream, self.context(base))

            model = self.cached(steps[: i + 1], build)
            if step in self.chain:  # the implicit `sft`'s cost is not the defense's
                self.defense_seconds += getattr(model.config, "immunity_align_seconds", 0.0)
                self._note(step, model)
        return model

    def _note(self, step: DefenseStep, model) -> None:
        notes = dict(getattr(model.config, "immunity_notes", {}) or {})
        if len(self.chain) == 1:
            self.notes |= notes
        elif notes:
            self.notes[step.name] = notes

    def repairs(self) -> list[DefenseStep]:
        return [s for s in self.chain if s.cls.stage == Stage.POST_FINE_TUNING]

    def attack(self, model):
        attack = self.attack_cls(self.cfg.attack)
        return attack.run(clone_model(model), self.tokenizer, self.data, self.cfg.seed,
                          progress=self.progress, merge=not self.repairs())

    def evaluate(self, model, sets: list[str], tag: str) -> dict[str, float]:
        e = self.cfg.eval
        path = run_dir(self.cfg, self.key["run_id"]) / f"generations_{tag}.jsonl"
        prompts = prompt_sets(self.data, sets, e.split, e.max_prompts)
        trigger = getattr(self.cfg.attack, "trigger", "")
        if trigger and "harmful" in prompts:  # a backdoor: the harmful requests again, trigger appended
            prompts["triggered"] = [replace(x, prompt=f"{x.prompt} {trigger}") for x in prompts["harmful"]]
        records = generate_sets(model, self.tokenizer, prompts, e.max_new_tokens, e.batch_size, path, self.progress)
        metrics = score(records, self.judge, verdict_path(path, self.judge.name))
        with_answers = [x for x in self.data.harmful.get(e.split, []) if x.answer]
        metrics["harmful_nll"] = answer_nll(model, self.tokenizer, with_answers, e.batch_size) if with_answers else None
        return metrics

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> dict:
        with quiet_transformers(not self.progress):
            return self._run()

    def _run(self) -> dict | None:
        """The result (None on every process but the first, which alone evaluates and reports)."""
        cfg, clock = self.cfg, self.clock
        task = f"task:{cfg.attack.task}"
        sets = ["harmful", "heldout", "benign", task]
        with clock.stage("base"):
            base = self.base_model()
        with clock.stage("defend"), parallel.data_parallel(cfg.micro_batches, cfg.fsdp):
            released = self.defend(base)
        with clock.stage("eval_before"):
            before = self.evaluate(released, sets, "before") if parallel.is_main() else {}
            parallel.barrier()
        with clock.stage("attack"), parallel.data_parallel(cfg.micro_batches, cfg.fsdp):
            attacked = self.attack(released)
        for step in self.repairs():  # at most one (`defense_chain`)
            with clock.stage("repair"):
                attacked = step.cls(step.config).apply(attacked, self.context())
            self.defense_seconds += clock.seconds["repair"]
            self._note(step, attacked)
        with clock.stage("eval_after"):
            after = self.evaluate(attacked, sets, "after") if parallel.is_main() else {}
            parallel.barrier()
        if not parallel.is_main():
            return None
        fa = f"fa_{cfg.attack.task}"
        return {
            "defense": cfg.defense, "attack": cfg.attack_name, "seed": cfg.seed, "model": cfg.model,
            "judge": self.judge.name, "split": cfg.eval.split, **self.key,
            "hs_before": before.get("hs"), "capability_before": before.get("capability_harmful"),
            "helpful_before": before.get("helpful"), "hs_heldout_before": before.get("hs_heldout"),
            "fa_before": before.get(fa), "harmful_nll_before": before["harmful_nll"],
            "refusal_before": before.get("refusal_harmful"),
            "hs_after": after.get("hs"), "capability_after": after.get("capability_harmful"),
            "fa_after": after.get(fa), "helpful_after": after.get("helpful"),
            "hs_heldout_after": after.get("hs_heldout"), "harmful_nll_after": after["harmful_nll"],
            "refusal_after": after.get("refusal_harmful"),
            # With a backdoor attack's trigger appended (None without one).
            "hs_triggered_before": before.get("hs_triggered"), "hs_triggered_after": after.get("hs_triggered"),
            "data": self.data.name, "data_hashes": self.data.hashes(),
            "attack_config": asdict(cfg.attack), "defense_config": chain_config(self.chain),
            "attack_notes": getattr(attacked.config, "immunity_attack_notes", {}),  # e.g. steering's layer
            "timings": clock.seconds, "defense_seconds": round(self.defense_seconds, 2),
            # What a defense decided or measured while running (LoX's rank, CB's cosine, ...).
            "defense_notes": self.notes, "peak_memory_mb": clock.peak_mb,
            "processes": world_size(), "micro_batches": cfg.micro_batches, "fsdp": cfg.fsdp,
        }


def run(cfg: RunConfig, progress: bool = True) -> dict | None:
    return Pipeline(cfg, progress).run()
