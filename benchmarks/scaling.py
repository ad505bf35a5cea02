"""Scaling on one machine, as ratios: a 12-run grid with 1 vs 2 local workers, and a training
step with 1 vs 2 data-parallel processes (torchrun, gloo on CPU; the path `accelerate launch`
takes on GPUs).

    python benchmarks/scaling.py [--steps 20]

Grid: `immunity bench` on a small SafetyWorld (hidden 64, 2 layers; the base and the aligned
models built once beforehand, so both timings measure the same 12 attack + evaluation runs),
`sft` x 12 attack settings, one thread per worker; wall time of the whole command. Data
parallel: `train()` on a 4-layer hidden-128 Llama, global batch 32, one thread per process;
median step time after 3 warm-up steps. Each part's two settings run back to back in this one
script; the machine's noise is in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SMALL = [
    "world.model.hidden=64",
    "world.model.layers=2",
    "world.model.heads=2",
    "world.model.intermediate=128",
    "world.pretrain.epochs=0.5",
    "defense.epochs=0.5",
    "attack.n=500",
    "attack.epochs=3",
]
GRID = ["--grid", "attack.p=0,0.05,0.1,0.2", "--grid", "attack.lr=1e-4,3e-4,1e-3"]  # 12 runs


def _immunity(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "immunity", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def grid_ratio(workdir: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", IMMUNITY_CACHE=os.path.join(workdir, "cache"))
    _immunity(["run", "--defense", "sft", "--seed", "0", "--quiet", *SMALL], env)  # base and aligned model, cached
    times = {}
    for workers in (1, 2):
        store = os.path.join(workdir, f"grid-{workers}.db")
        times[workers] = _immunity(
            [
                "bench",
                "--defenses",
                "sft",
                "--seeds",
                "0",
                *GRID,
                "--store",
                store,
                "--quiet",
                "--workers",
                str(workers),
                f"out_dir={workdir}/out-{workers}",
                *SMALL,
            ],
            env,
        )  # separate out_dirs: a grid would merge the other's result files
    return {
        "runs": 12,
        "seconds_1": round(times[1], 1),
        "seconds_2": round(times[2], 1),
        "speedup": round(times[1] / times[2], 2),
    }


def _ddp_worker(steps: int, out: str) -> None:
    """Under torchrun (or alone): median seconds per training step, written by rank 0."""
    import torch

    from immunity.models import build_model
    from immunity.training import TrainConfig, parallel, train

    torch.set_num_threads(1)
    model = build_model("llama", 1263, hidden=128, layers=4, heads=4, intermediate=256, max_positions=64, seed=0)
    g = torch.Generator().manual_seed(0)
    features = []
    for _ in range(32 * (steps + 3)):
        ids = torch.randint(6, 1263, (48,), generator=g).tolist()
        features.append({"input_ids": ids, "attention_mask": [1] * 48, "labels": [-100] * 24 + ids[24:]})
    stamps = []
    with parallel.data_parallel():
        train(
            model,
            features,
            TrainConfig(max_steps=steps + 3, batch_size=32),
            pad_id=0,
            progress=False,
            on_step=lambda _: stamps.append(time.perf_counter()),
        )
    if parallel.is_main():
        gaps = [b - a for a, b in zip(stamps[3:], stamps[4:])]
        with open(out, "w") as f:
            json.dump({"step_s": statistics.median(gaps), "processes": parallel.world_size()}, f)


def ddp_ratio(workdir: str, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = os.path.join(workdir, "ddp-1.json"), os.path.join(workdir, "ddp-2.json")
    me = os.path.abspath(__file__)
    subprocess.run([sys.executable, me, "--ddp-worker", one, "--steps", str(steps)], env=env, check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            me,
            "--ddp-worker",
            two,
            "--steps",
            str(steps),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    a, b = (json.load(open(p)) for p in (one, two))
    assert b["processes"] == 2
    return {
        "step_ms_1": round(1000 * a["step_s"], 1),
        "step_ms_2": round(1000 * b["step_s"], 1),
        "speedup": round(a["step_s"] / b["step_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        _ddp_worker(args.steps, args.ddp_worker)
        return
    with tempfile.TemporaryDirectory() as workdir:
        grid, ddp = grid_ratio(workdir), ddp_ratio(workdir, args.steps)
    print(f"Cores: {os.cpu_count()}; one thread per worker or process.\n")
    print("| what | 1 worker / process | 2 workers / processes | speedup |")
    print("|---|---|---|---|")
    print(
        f"| {grid['runs']}-run `bench` grid (wall s) | {grid['seconds_1']} | {grid['seconds_2']} | {grid['speedup']}x |"
    )
    print(
        f"| data-parallel `train()` step, global batch 32 (ms) | {ddp['step_ms_1']} | {ddp['step_ms_2']} | "
        f"{ddp['speedup']}x |"
    )


if __name__ == "__main__":
    main()
