"""Where a grid's runs execute: `local` (K processes on this machine), `slurm` (one SLURM job per
run, through submitit; `submitit-local` is the same path on this machine, without a scheduler),
`ray` (Ray tasks).

Workers never open the results store: each writes its result atomically as `result.json` next to
its generations, and the coordinator (`immunity bench`) merges those files into the store as they
arrive. So no SQLite file is shared by writers over a network filesystem, and a grid resumed after
a crash merges what had finished instead of computing it again.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

from ..config import RunConfig
from ..training import TrainingDiverged
from .identity import RunIdentity
from .pipeline import Pipeline, run_dir

LAUNCHERS = ("local", "slurm", "submitit-local", "ray")


def result_file(cfg: RunConfig, run_id: str) -> Path:
    return run_dir(cfg, run_id) / "result.json"


def compute(cfg: RunConfig, threads: int, progress: bool = False) -> str:
    """One run in a worker: its result and resolved configuration, written atomically; returns
    the file's path (the worker's code decides the run id, as the coordinator's would)."""
    import torch

    torch.set_num_threads(threads)
    identity = RunIdentity.of(cfg)
    result = Pipeline(cfg, progress, identity).run()
    path = result_file(cfg, result["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"result.json.writing-{os.getpid()}")
    partial.write_text(json.dumps({"result": result, "config": identity.resolved}, default=str))
    os.replace(partial, path)
    return str(path)


def read_result(path: str | Path) -> tuple[dict, dict]:
    """(result, resolved configuration) of a finished run's file."""
    record = json.loads(Path(path).read_text())
    return record["result"], record["config"]


Outcome = tuple[int, str | None, BaseException | None]  # (job index, result file, error)


def _die_with_parent() -> None:
    """A local worker ends when its coordinator does (Linux: the parent-death signal), so that a
    killed `bench` leaves no orphan computing runs nobody will merge."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _local(jobs: list[RunConfig], workers: int, threads: int) -> Iterator[Outcome]:
    """K spawned processes (fork would copy torch's thread pools), each with `threads` threads."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # inherited by the workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_die_with_parent) as pool:
        futures = {pool.submit(compute, cfg, threads): i for i, cfg in enumerate(jobs)}
        for future in as_completed(futures):
            error = future.exception()
            yield futures[future], None if error else future.result(), error


def _submitit(jobs: list[RunConfig], cluster: str, folder: str, options: dict, threads: int) -> Iterator[Outcome]:
    try:
        import submitit
    except ImportError as err:
        raise ImportError("--launcher slurm needs submitit: pip install 'immunity[cluster]'") from err
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**options)
    with executor.batch():  # one job array
        submitted = [executor.submit(compute, cfg, threads) for cfg in jobs]
    index = {job.job_id: i for i, job in enumerate(submitted)}
    for job in submitit.helpers.as_completed(submitted):
        error = job.exception()
        yield index[job.job_id], None if error else job.result(), error


def _ray(jobs: list[RunConfig], workers: int, threads: int) -> Iterator[Outcome]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--launcher ray needs Ray: pip install 'immunity[ray]'") from err
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS")
                 else workers * threads, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=threads)(compute)
    pending = {task.remote(cfg, threads): i for i, cfg in enumerate(jobs)}
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done)
        try:
            yield i, ray.get(done), None
        except Exception as err:  # noqa: BLE001 - a failed run is reported, the grid goes on
            yield i, None, err


def launch(launcher: str, jobs: list[RunConfig], workers: int, threads: int, folder: str = "runs/submitit",
           options: dict | None = None) -> Iterator[Outcome]:
    """Run `jobs`; yield (index, result file, error) as each one finishes."""
    if launcher == "local":
        return _local(jobs, workers, threads)
    if launcher in ("slurm", "submitit-local"):
        return _submitit(jobs, "slurm" if launcher == "slurm" else "local", folder, options or {}, threads)
    if launcher == "ray":
        return _ray(jobs, workers, threads)
    raise ValueError(f"--launcher must be one of {LAUNCHERS}, got {launcher!r}")


def in_process(jobs: list[RunConfig], progress: bool, before: Callable[[int], None]) -> Iterator[Outcome]:
    """One worker: the runs in this process, one after another (progress bars shown; an error
    other than a diverged run stops the grid with its traceback, as a bug should)."""
    import torch

    for i, cfg in enumerate(jobs):
        before(i)
        try:
            yield i, compute(cfg, torch.get_num_threads(), progress), None
        except TrainingDiverged as err:
            yield i, None, err
