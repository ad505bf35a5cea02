"""`bench`: a grid of runs (defenses x attack settings x seeds) against one results store.

The grid is planned whole and validated before any run starts, duplicates removed; then
`Grid.run` claims a run nobody has stored or is computing each time one of its workers is free
(so several `bench` processes on one store split a grid between them), dispatches it to a
launcher (`launch`), merges each result file into the store as it arrives, renews its claims
while it works (`store.Heartbeat`), and waits for runs another `bench` is computing (or takes
over a claim whose lease ran out). Resumable: an interrupted grid's finished result files are
merged, not recomputed.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import cast

from ..config import RunConfig, load_run_config, parse_overrides, validate
from ..engine.identity import RunIdentity
from .launch import in_process, launch, read_result, result_file
from .store import Heartbeat, Store


def grid_points(items: list[str]) -> list[dict]:
    """`key=v1,v2` axes -> every combination, as {key: value} dicts."""
    axes = []
    for item in items:
        key, values = next(iter(parse_overrides([item]).items()))
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def plan_runs(
    defenses: list[str], seeds: list[int], grid: list[str], overrides: list[str], config: str | None = None
) -> list[tuple[RunConfig, RunIdentity]]:
    """Every run of the grid, validated before any of them starts, duplicates removed; seed by
    seed, and within a grid point defense after defense, so that parallel workers train different
    defenses at once instead of waiting on one another's (cached) defense."""
    plan, seen = [], set()
    for seed, point, defense in itertools.product(seeds, grid_points(grid), defenses):
        cfg = load_run_config(config, overrides + [f"{k}={v}" for k, v in point.items()], defense=defense, seed=seed)
        validate(cfg)
        identity = RunIdentity.of(cfg)
        if identity.run_id not in seen:
            seen.add(identity.run_id)
            plan.append((cfg, identity))
    return plan


def describe(cfg: RunConfig) -> str:
    settings = " ".join(f"{k}={v}" for k, v in cfg.defense_args.items())
    return (
        f"{cfg.defense}{' ' + settings if settings else ''} seed={cfg.seed} | "
        f"{cfg.attack_cls.label(asdict(cfg.attack))}"
    )


@dataclass
class Grid:
    plan: list[tuple[RunConfig, RunIdentity]]
    store: Store
    launcher: str = "local"
    workers: int = 1
    options: dict = field(default_factory=dict)  # submitit's parameters
    folder: str = "runs/submitit"
    progress: bool = True
    failed: list[str] = field(default_factory=list)

    def run(self) -> list[dict]:
        """Compute what the store lacks; the grid's stored rows."""
        todo = self.unmerged()
        print(
            f"bench: {len(self.plan)} runs, {len(self.plan) - len(todo)} already stored, {len(todo)} to run",
            file=sys.stderr,
        )
        number = {identity.run_id: i for i, (_, identity) in enumerate(todo, 1)}

        def announce(cfg: RunConfig, identity: RunIdentity) -> None:
            print(f"[{number[identity.run_id]}/{len(todo)}] {describe(cfg)}", file=sys.stderr, flush=True)

        with Heartbeat(self.store.path):
            while pending := [
                (cfg, identity)
                for cfg, identity in todo
                if not self.store.has(identity.run_id) and identity.run_id not in self.failed
            ]:
                if not self.dispatch(pending, announce):
                    # The rest is being computed by another `bench` on this store: wait for it, or
                    # for its lease to run out (then the claim is taken over).
                    time.sleep(1.0)
        ids = {identity.run_id for _, identity in self.plan}
        return [r for r in self.store.results() if r["run_id"] in ids]

    def unmerged(self) -> list[tuple[RunConfig, RunIdentity]]:
        """The runs the store lacks, after merging result files an interrupted grid's workers
        finished but nobody merged."""
        todo = [(cfg, identity) for cfg, identity in self.plan if not self.store.has(identity.run_id)]
        for cfg, identity in todo:
            if result_file(cfg, identity.run_id).is_file():
                self.store.put(*read_result(result_file(cfg, identity.run_id)))
        return [(cfg, identity) for cfg, identity in todo if not self.store.has(identity.run_id)]

    def dispatch(self, runs: list[tuple[RunConfig, RunIdentity]], announce) -> int:
        """Claim and run what of `runs` nobody holds, a run each time a worker is free; merge each
        result file into the store as it arrives; a failed run is reported and stored nowhere,
        the rest of the grid goes on. Returns how many runs this process claimed."""
        claimed: list[int] = []

        def claimable():
            for i, (cfg, identity) in enumerate(runs):
                if not self.store.has(identity.run_id) and self.store.claim(identity.run_id):
                    claimed.append(i)
                    announce(cfg, identity)
                    yield i, cfg

        if self.launcher == "local" and self.workers == 1:
            outcomes = in_process(claimable(), progress=self.progress)
        else:
            threads = int(self.options.get("cpus_per_task", 0)) or max(1, (os.cpu_count() or 1) // self.workers)
            outcomes = launch(
                self.launcher, claimable(), self.workers, threads, folder=self.folder, options=self.options
            )
        try:
            for i, path, error in outcomes:
                run_id = runs[i][1].run_id
                if error is None:
                    self.store.put(*read_result(cast(str, path)))  # a file wherever there is no error
                else:
                    print(f"immunity: error: {describe(runs[i][0])}: {error}", file=sys.stderr)
                    self.failed.append(run_id)
                self.store.release(run_id)
        finally:
            for i in claimed:
                self.store.release(runs[i][1].run_id)
        return len(claimed)
