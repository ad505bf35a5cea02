"""Where a grid's runs execute: `local` (K processes on this machine), `slurm` (one SLURM job per
run, through submitit; `submitit-local` is the same path on this machine, without a scheduler),
`ray` (Ray tasks).

Local workers are processes of our own (spawned, one run at a time each): a worker the kernel
kills (the OOM killer sends signal 9) fails its run alone, reported as killed with the memory it
had reached, and a fresh worker takes the next run, while the other workers go on.

Workers never open the results store: each writes its result atomically as `result.json` next to
its generations, and the coordinator (`immunity bench`) merges those files into the store as they
arrive. So no SQLite file is shared by writers over a network filesystem, and a grid resumed after
a crash merges what had finished instead of computing it again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import cast

from ..config import RunConfig
from ..engine.identity import RunIdentity
from ..engine.pipeline import Pipeline, run_dir
from ..outputs import write_text_atomic
from ..training import TrainingDiverged

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
    if result is None:
        raise RuntimeError("a worker's run returned no result (only a launcher's first process returns one)")
    path = result_file(cfg, result["run_id"])
    write_text_atomic(path, json.dumps({"result": result, "config": identity.resolved}, default=str))
    return str(path)


def read_result(path: str | Path) -> tuple[dict, dict]:
    """(result, resolved configuration) of a finished run's file."""
    record = json.loads(Path(path).read_text())
    return record["result"], record["config"]


Outcome = tuple[int, str | None, BaseException | None]  # (job index, result file, error)


def _die_with_parent(coordinator: int) -> None:
    """A local worker ends when its coordinator does (Linux: the parent-death signal), so that a
    killed `bench` leaves no orphan computing runs nobody will merge. A spawned worker sets the
    signal only after its imports, seconds after it started: a coordinator killed in between
    sends nothing, so a worker whose parent is no longer its coordinator exits at once."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != coordinator:
        raise SystemExit("immunity: the coordinator of this worker is gone")


class WorkerKilled(RuntimeError):
    """A local worker process ended without reporting its run (a signal, or an exit)."""

    def __init__(self, exitcode: int | None, peak_mb: float):
        if exitcode is not None and exitcode < 0:
            signal_number = -exitcode
            memory = f"; likely out of memory at {peak_mb / 1024:.1f} GB" if signal_number == 9 and peak_mb else ""
            text = f"killed (signal {signal_number}{memory})"
        else:
            text = f"its worker process exited with status {exitcode} before reporting"
        super().__init__(text)


def _resident_peak_mb(pid: int) -> float:
    """A live process's peak resident memory so far (Linux; 0 elsewhere or once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _serve(connection, threads: int, coordinator: int) -> None:
    """A local worker: compute each run sent until told to stop (None); report (file, error)."""
    _die_with_parent(coordinator)
    while (cfg := connection.recv()) is not None:
        try:
            connection.send((compute(cfg, threads), None))
        except Exception as err:  # noqa: BLE001 - reported to the coordinator, which goes on
            try:
                connection.send((None, err))
            except Exception:  # noqa: BLE001 - an error that does not pickle: its text
                connection.send((None, RuntimeError(f"{type(err).__name__}: {err}")))


class _Worker:
    def __init__(self, context, threads: int):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, threads, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.job: int | None = None
        self.peak_mb = 0.0

    def give(self, index: int, cfg: RunConfig) -> None:
        self.job, self.peak_mb = index, 0.0
        self.connection.send(cfg)

    def stop(self) -> None:
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()


def _local(jobs: Iterable[tuple[int, RunConfig]], workers: int, threads: int) -> Iterator[Outcome]:
    """K spawned processes (fork would copy torch's thread pools), each with `threads` threads,
    taking the next job as each is free (so `jobs` may claim lazily). A worker that dies fails
    its own run only; a fresh one replaces it."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # inherited by the workers
    context, pending = get_context("spawn"), iter(jobs)
    idle: list[_Worker] = []
    busy: list[_Worker] = []
    try:
        while True:
            while len(busy) < workers and (job := next(pending, None)) is not None:
                worker = idle.pop() if idle else _Worker(context, threads)
                worker.give(*job)
                busy.append(worker)
            if not busy:
                return
            ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
            for worker in list(busy):
                worker.peak_mb = max(worker.peak_mb, _resident_peak_mb(worker.process.pid))
                if worker.connection in ready and worker.connection.poll():
                    try:
                        path, error = worker.connection.recv()
                    except (EOFError, OSError):  # died while answering
                        worker.process.join(5)
                        path, error = None, WorkerKilled(worker.process.exitcode, worker.peak_mb)
                    else:
                        idle.append(worker)
                elif worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join(5)
                    path, error = None, WorkerKilled(worker.process.exitcode, worker.peak_mb)
                else:
                    continue
                busy.remove(worker)
                yield cast(int, worker.job), path, error  # a busy worker has a job
    finally:
        for worker in idle + busy:
            worker.stop()


def _submitit(
    jobs: list[tuple[int, RunConfig]], cluster: str, folder: str, options: dict, threads: int
) -> Iterator[Outcome]:
    try:
        import submitit
    except ImportError as err:
        raise ImportError("--launcher slurm needs submitit: pip install 'immunity[cluster]'") from err
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**options)
    with executor.batch():  # one job array
        numbered = [(i, executor.submit(compute, cfg, threads)) for i, cfg in jobs]
    index = {job.job_id: i for i, job in numbered}
    for job in submitit.helpers.as_completed([job for _, job in numbered]):
        error = job.exception()
        yield index[job.job_id], None if error else job.result(), error


def _ray(jobs: list[tuple[int, RunConfig]], workers: int, threads: int) -> Iterator[Outcome]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--launcher ray needs Ray: pip install 'immunity[ray]'") from err
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            num_cpus=None if os.environ.get("RAY_ADDRESS") else workers * threads,
            include_dashboard=False,
            log_to_driver=False,
        )
    task = ray.remote(num_cpus=threads)(compute)
    pending = {task.remote(cfg, threads): i for i, cfg in jobs}
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done)
        try:
            yield i, ray.get(done), None
        except Exception as err:  # noqa: BLE001 - a failed run is reported, the grid goes on
            yield i, None, err


def launch(
    launcher: str,
    jobs: Iterable[tuple[int, RunConfig]],
    workers: int,
    threads: int,
    folder: str = "runs/submitit",
    options: dict | None = None,
) -> Iterator[Outcome]:
    """Run the (index, config) `jobs`; yield (index, result file, error) as each one finishes.
    The local launcher draws the next job only when a worker is free; the cluster launchers
    submit them all at once."""
    if launcher == "local":
        return _local(jobs, workers, threads)
    if launcher in ("slurm", "submitit-local"):
        return _submitit(list(jobs), "slurm" if launcher == "slurm" else "local", folder, options or {}, threads)
    if launcher == "ray":
        return _ray(list(jobs), workers, threads)
    raise ValueError(f"--launcher must be one of {LAUNCHERS}, got {launcher!r}")


def in_process(jobs: Iterable[tuple[int, RunConfig]], progress: bool) -> Iterator[Outcome]:
    """One worker: the runs in this process, one after another (progress bars shown; an error
    other than a diverged run stops the grid with its traceback, as a bug should)."""
    import torch

    for i, cfg in jobs:
        try:
            yield i, compute(cfg, torch.get_num_threads(), progress), None
        except TrainingDiverged as err:
            yield i, None, err
