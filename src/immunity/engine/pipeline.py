"""base -> defense (at its stage) -> attack -> evaluate, with timings and peak memory per stage.

Defenses whose stage is not `alignment` build on standard `sft` alignment, as in their papers
(LoX extrapolates an aligned model; Antidote repairs an attacked aligned model). A composition
(`booster+lox+antidote`) runs its defenses in stage order: the alignment defense (or `sft`), each
post-alignment defense on what the one before released, the attack, then the repair.

A released model is cached on disk with what its defense noted and the adapter it trained
(`Release`), keyed by the defenses' configs and code and by the base model (SafetyWorld's
config, or a local model's weights, the data's content and the seed), so the attacks of a grid
share one defense run. Under torchrun / accelerate launch, every process trains the defense and
the attack together (`training.parallel`); the first builds the base model first, and alone
evaluates and returns the result. Data-parallel released models are not cached (they differ
from one process's).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from .. import builtins  # noqa: F401  (registers the built-in defenses, attacks and judges)
from ..cache import cached_model, code_version, stable_hash, weights_digest
from ..config import DefenseStep, RunConfig, chain_config
from ..data import from_world
from ..data.sources import cached_bundle
from ..defenses.base import DefenseContext, Stage
from ..evaluation.judges import make_judge
from ..evaluation.suite import answer_nll, evenly_spaced, generate_sets, prompt_sets, score, verdict_path
from ..models import clone_model, load_model, load_tokenizer
from ..models.lora import ReleasedAdapter
from ..registry import JUDGES, lookup
from ..safetyworld import SafetyWorld
from ..training import length_grouped, parallel, provider_objective
from ..training.parallel import world_size
from ..training.precision import autocast
from . import kept
from .answers import complete, needs_answers
from .identity import RunIdentity
from .meters import StageClock, peak_memory_mb, quiet_transformers, reset_peak_memory
from .release import Release, default_alignment, release_path
from .resources import estimate
from .result import RunResult


def run_dir(cfg: RunConfig, run_id: str) -> Path:
    """Where a run writes its generations (and, under a launcher, its result)."""
    return Path(cfg.out_dir) / f"{cfg.defense}-seed{cfg.seed}-{run_id}"


class Pipeline:
    """One run: everything a result needs, built from a `RunConfig` (and its identity, computed
    once: pass it if the caller has it)."""

    def __init__(self, cfg: RunConfig, progress: bool = True, identity: RunIdentity | None = None):
        self.cfg = cfg
        self.progress = progress and parallel.is_main()  # one set of progress bars, from the first process
        needs_world = cfg.model == "safetyworld" or not cfg.data
        with parallel.main_first():  # rank 0 builds and caches, the other ranks read
            self.world = SafetyWorld(cfg.world, progress=progress) if needs_world else None
        self.chain = cfg.chain
        self.attack = cfg.attack_cls(cfg.attack)
        self.identity = identity or RunIdentity.of(cfg)  # taken now, from the code this process loaded
        self.device = parallel.device()
        self.clock = StageClock()
        reset_peak_memory()
        self.tokenizer = (
            cast(SafetyWorld, self.world).tokenizer
            if cfg.model == "safetyworld"
            else load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        )
        self.default_alignment = default_alignment(cfg)  # what a chain without an alignment defense builds on
        self.data = (
            cached_bundle(tuple(cfg.data), cfg.task_data or None, cfg.data_seed)
            if cfg.data
            else from_world(cast(SafetyWorld, self.world).data)
        )
        self._judge = None
        self.defense_seconds = 0.0  # the defenses' own cost (alignment measured even when cached)
        self.defense_peak_mb = 0.0  # and their peak resident memory, from the release's build
        self.notes: dict = {}  # what the defenses decided or measured
        self.released_adapter: ReleasedAdapter | None = None  # the last defense's trained adapter
        self.release_path: Path | None = None  # the released model's cache entry, if cached

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
                return self.world.base_model().to(self.device)
        if Path(cfg.model).is_dir():
            check_memory(cfg, self.progress)
        model, _ = load_model(
            cfg.model,
            trust_remote_code=cfg.trust_remote_code,
            dtype=cfg.model_dtype,
            device_map=cfg.device_map,
            quantization=cfg.quantization,
        )
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()  # so adapters on a frozen base still get gradients
        return model if cfg.device_map else model.to(self.device)

    def complete_data(self, base, splits: list[str] | None = None) -> None:
        """Give the data the answers it lacks on `splits` (None: every split), from the unaligned
        base model (`engine.answers`): `base` itself, or the base model a derived model's card names."""
        gold_benign = self.cfg.benign_answers == "gold"
        if not self.cfg.data or not needs_answers(self.data, splits, gold_benign):
            return
        source = answers_model(self.cfg.model)
        model = (
            base
            if source == self.cfg.model
            else cast(Any, load_model(source, dtype=self.cfg.model_dtype)[0]).to(self.device)
        )
        identity = weights_digest(Path(source)) if Path(source).is_dir() else stable_hash(source)  # a hub id: its name
        self.data = complete(
            self.data, model, self.tokenizer, identity, self.cfg.answer_tokens, self.progress, splits, gold_benign
        )

    def context(self, base_model=None) -> DefenseContext:
        judge = None if self.cfg.eval.judge == "auto" else (lambda: self.judge)
        return DefenseContext(self.tokenizer, self.data, self.cfg.seed, self.progress, base_model, judge)

    @contextlib.contextmanager
    def training(self):
        """How the training stages run: their shards (`micro_batches`, `fsdp`), precision (bfloat16
        autocast or float32) and batch order (`group_by_length`)."""
        cfg = self.cfg
        with (
            parallel.data_parallel(cfg.micro_batches, cfg.fsdp),
            autocast(cfg.precision, self.device),
            length_grouped(cfg.group_by_length),
        ):
            yield

    def base_key(self) -> str | None:
        """What identifies the run's base model and the data its defenses see, or None where
        released models are not cached (several processes; a hub model; quantized or spread ones)."""
        cfg = self.cfg
        if world_size() > 1:
            return None
        # Micro-batches shard a step's batch-coupled losses: part of what the release is a function of.
        shards: list[Any] = [cfg.micro_batches] if cfg.micro_batches > 1 else []
        shards += [cfg.precision] if cfg.precision != "float32" else []  # bfloat16 trains another model
        shards += ["grouped"] if cfg.group_by_length else []  # so does another batch order
        shards += ["gold-benign"] if cfg.benign_answers == "gold" else []  # and other benign answers
        # The alignment data is part of what is released, for every model: SafetyWorld's base
        # aligned on a user's data is another model than the world's own alignment.
        data = [self.data.hashes()] if cfg.data else []
        if cfg.model == "safetyworld":
            return stable_hash([cast(SafetyWorld, self.world).model_key(), cfg.seed, *data, *shards])
        if not Path(cfg.model).is_dir() or cfg.quantization or cfg.device_map:
            return None
        return stable_hash([weights_digest(Path(cfg.model)), cfg.model_dtype, self.data.hashes(), cfg.seed, *shards])

    def cached(self, steps: list[DefenseStep], build, extra: Sequence | None = ()) -> Release:
        """The `Release` of the defenses `steps`: `build()` (-> (model, context)) timed, cached on
        disk where the base has a stable key (and `extra`, what else it depends on, is not None),
        so a run that reuses it still reports its cost."""

        def timed() -> Release:
            start = time.perf_counter()
            model, context = build()
            return Release(
                model,
                context.notes,
                context.released_adapter,
                round(time.perf_counter() - start, 2),
                round(peak_memory_mb(), 1),
            )

        base = self.base_key()
        if base is None or extra is None:
            self.release_path = None
            return timed()
        base = stable_hash([base, *extra]) if extra else base
        self.release_path = release_path(steps, self.default_alignment, base)
        return cached_model(self.release_path, timed, lambda p: Release.load(p, self.device), lambda r, p: r.save(p))

    def defend(self, start, before=None, before_key: str | None = None, implicit_alignment: bool = True):
        """The released model: the chain's defenses in stage order, the first on a copy of
        `start`, each later one on what the one before released. The one engine behind `run` and
        `defend`.

        With `implicit_alignment` (a run: `start` is the unaligned base) a chain that does not
        begin with an alignment defense builds on `sft`; without it (`immunity defend`) `start`
        is then the aligned model itself. What a post-alignment defense sees as the model before
        alignment (LoX extrapolates from it) is `start` when the chain aligned it, else `before`
        (`defend --base-model`; `before_key`, the hash of its weights, is part of the cache key:
        None with a `before` leaves the release uncached)."""
        steps = [s for s in self.chain if s.cls.stage not in (Stage.FINE_TUNING, Stage.POST_FINE_TUNING)]
        if implicit_alignment and (not steps or steps[0].cls.stage != Stage.ALIGNMENT):
            steps = [self.default_alignment, *steps]
        aligned_here = steps[0].cls.stage == Stage.ALIGNMENT
        extra = [] if before is None else (None if before_key is None else [before_key])
        model = None
        for i, step in enumerate(steps):

            def build(step=step, upstream=model):
                model_before = (start if i > 0 else None) if aligned_here else before
                context = self.context(model_before)
                model_in = clone_model(start) if upstream is None else upstream
                return step.cls(step.config).apply(model_in, context), context

            release = self.cached(steps[: i + 1], build, extra)
            model, self.released_adapter = release.model, release.adapter
            if step in self.chain:  # the implicit `sft`'s cost is not the defense's
                self.defense_seconds += release.seconds
                self.defense_peak_mb = max(self.defense_peak_mb, release.peak_mb)
                self._note(step, release.notes)
        return model

    def peak_memory(self) -> dict[str, float]:
        """Per stage, this run's peak resident memory so far; "defense": the released model's build
        peak (kept with a cached release, so a run that reuses it still reports it)."""
        return self.clock.peak_mb | ({"defense": self.defense_peak_mb} if self.defense_peak_mb else {})

    def _note(self, step: DefenseStep, notes: dict) -> None:
        if len(self.chain) == 1:
            self.notes |= notes
        elif notes:
            self.notes[step.name] = notes

    def repairs(self) -> list[DefenseStep]:
        return [s for s in self.chain if s.cls.stage == Stage.POST_FINE_TUNING]

    def run_attack(self, model):
        """The attack on a copy of the released model; under a fine-tuning-stage defense its
        fine-tuning runs with the provider's objective (the released model as its reference)."""
        provider = next((s for s in self.chain if s.cls.stage == Stage.FINE_TUNING), None)
        objective = (
            provider_objective(provider.cls(provider.config).objective(model, self.context()))
            if provider
            else contextlib.nullcontext()
        )
        with objective:
            return self.attack.run(
                clone_model(model),
                self.tokenizer,
                self.data,
                self.cfg.seed,
                progress=self.progress,
                merge=not self.repairs(),
                adapter=self.released_adapter,
            )

    def evaluate(
        self, model, sets: list[str], name: str, *, released: bool = False, attacked: bool = False
    ) -> dict[str, float | None]:
        """Generate for each prompt set (and the attack's own sets), save as `generations_NAME`,
        judge, aggregate; and the answer NLL of the split's harmful (request, compliant answer)
        and benign pairs. `attacked`: the attack's decoding-time intervention (a prefill) applies.
        `released`: the model is the cached release, whose evaluation is kept in its cache entry
        and reused by every attack that meets it (`kept`)."""
        e = self.cfg.eval
        path = run_dir(self.cfg, self.identity.run_id) / f"generations_{name}.jsonl"
        prompts = prompt_sets(self.data, sets, e.split, e.max_prompts)
        prompts |= self.attack.extra_prompt_sets(prompts)
        entry = None
        if released and self.release_path is not None:
            judge_module = lookup(JUDGES, "judge", e.judge.split(":")[0]).__module__
            entry = kept.entry(
                self.release_path, prompts, e, self.judge.name, self.data.hashes(), code_version(__name__, judge_module)
            )
            found = kept.reuse(entry, path)
            if found is not None:
                return found
        metrics = self.measure(model, prompts, path, self.attack.prompt_prefill if attacked else None)
        if entry is not None:
            kept.keep(entry, path, metrics)
        return metrics

    def measure(self, model, prompts: dict, path: Path, prefill) -> dict[str, float | None]:
        e = self.cfg.eval
        records = generate_sets(
            model, self.tokenizer, prompts, e.max_new_tokens, e.batch_size, path, self.progress, prefill
        )
        metrics = score(records, self.judge, verdict_path(path, self.judge.name))
        for name, role in (("harmful_nll", self.data.harmful), ("benign_nll", self.data.benign)):
            with_answers = evenly_spaced([x for x in role.get(e.split, []) if x.answer], e.max_prompts)
            metrics[name] = answer_nll(model, self.tokenizer, with_answers, e.batch_size) if with_answers else None
        return metrics

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> dict | None:
        with quiet_transformers(not self.progress):
            return self._run()

    def _run(self) -> dict | None:
        """The result (None on every process but the first, which alone evaluates and reports)."""
        cfg, clock = self.cfg, self.clock
        # FA: the attacker's task, measured only where the attack trains on it (or for the world's own tasks)
        task = self.world is not None or self.attack.trains_on_task(asdict(cfg.attack))
        sets = ["harmful", "heldout", "benign"] + ([f"task:{cfg.attack.task}"] if task else [])
        with clock.stage("base"):
            base = self.base_model()
            self.complete_data(base)
        with clock.stage("defend"), self.training():
            released = self.defend(base)
        with clock.stage("eval_before"):
            before = self.evaluate(released, sets, "before", released=True) if parallel.is_main() else {}
            parallel.barrier()
        with clock.stage("attack"), self.training():
            attacked = self.run_attack(released)
        for step in self.repairs():  # at most one (`defense_chain`)
            context = self.context()
            with clock.stage("repair"):
                attacked = step.cls(step.config).apply(attacked, context)
            self.defense_seconds += clock.seconds["repair"]
            self._note(step, context.notes)
        with clock.stage("eval_after"):
            after = self.evaluate(attacked, sets, "after", attacked=True) if parallel.is_main() else {}
            parallel.barrier()
        if not parallel.is_main():
            return None
        return self.result(before, after).check().to_dict()

    def result(self, before: dict, after: dict) -> RunResult:
        cfg = self.cfg
        standard = {
            "hs": "hs",
            "refusal": "refusal_harmful",
            "capability": "capability_harmful",
            "helpful": "helpful",
            "hs_heldout": "hs_heldout",
            "fa": f"fa_{cfg.attack.task}",
            "harmful_nll": "harmful_nll",
            "over_refusal": "refusal_benign",
            "benign_nll": "benign_nll",
        }
        extra = {name for name in (*before, *after) if name.startswith("hs_") and name != "hs_heldout"}
        measured: dict[str, Any] = {
            f"{key}_{when}": metrics.get(source)
            for key, source in standard.items()
            for when, metrics in (("before", before), ("after", after))
        }
        return RunResult(
            defense=cfg.defense,
            attack=cfg.attack_name,
            seed=cfg.seed,
            model=cfg.model,
            judge=self.judge.name,
            split=cfg.eval.split,
            **self.identity.key(),
            data=self.data.name,
            data_hashes=self.data.hashes(),
            attack_config=asdict(cfg.attack),
            defense_config=chain_config(self.chain),
            **measured,
            extra_before={name: before.get(name) for name in extra},
            extra_after={name: after.get(name) for name in extra},
            attack_notes=self.attack.notes,
            defense_notes=self.notes,
            timings=self.clock.seconds,
            defense_seconds=round(self.defense_seconds, 2),
            peak_memory_mb=self.peak_memory(),
            processes=world_size(),
            micro_batches=cfg.micro_batches,
            fsdp=cfg.fsdp,
            precision=cfg.precision,
        )


def check_memory(cfg: RunConfig, show: bool) -> None:
    """Before a real model loads: its memory estimate on stderr (with `show`), and a warning when
    it exceeds what this machine has available."""
    configs = [step.config for step in cfg.chain] + [cfg.attack]
    batch = max([getattr(c, "batch_size", 0) for c in configs] + [1]) // max(1, cfg.micro_batches)
    full = any(getattr(c, "mode", "lora") == "full" for c in configs)
    found = estimate(cfg.model, max(1, batch), full, cfg.model_dtype)
    if found is None:
        return
    if found.too_large():
        print(
            f"immunity: warning: {found.line()}: expect to run out of memory (lower the batch sizes, set "
            "micro_batches=K or gradient_checkpointing=true)",
            file=sys.stderr,
            flush=True,
        )
    elif show:
        print(f"immunity: {found.line()}", file=sys.stderr, flush=True)


def answers_model(model: str) -> str:
    """The model whose answers fill the data: the unaligned base a released or attacked model
    was made from (its card's `base_model`, if that directory still holds the same weights), else
    `model` itself."""
    card = Path(model) / "immunity.json"
    if card.is_file():
        base = json.loads(card.read_text()).get("base_model") or {}
        if (
            base.get("path")
            and Path(base["path"]).is_dir()
            and weights_digest(Path(base["path"])) == base.get("weights")
        ):
            return base["path"]
    return model


def run(cfg: RunConfig, progress: bool = True) -> dict | None:
    return Pipeline(cfg, progress).run()
