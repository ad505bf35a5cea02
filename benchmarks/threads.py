"""Do SafetyWorld results depend on the machine's thread count? `sft` under the default attack,
seeds 0-2, each from an empty model cache, once with OMP_NUM_THREADS=1 and once with 2 (each in
its own process); prints HS after per seed and the largest difference (issue: numbers that hold).

    python benchmarks/threads.py [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def hs_after(seed: int, threads: int) -> dict:
    env = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "IMMUNITY_CACHE": tempfile.mkdtemp(prefix="threads-"),
    }
    with tempfile.TemporaryDirectory() as runs:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "immunity",
                "run",
                "--defense",
                "sft",
                "--seed",
                str(seed),
                "--json",
                "--quiet",
                f"out_dir={runs}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {k: result[k] for k in ("hs_before", "hs_after", "fa_after", "harmful_nll_after")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    seeds = [int(s) for s in parser.parse_args().seeds.split(",")]
    print("| seed | HS after, 1 thread | HS after, 2 threads | difference | harmful NLL after, 1 / 2 |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for seed in seeds:
        one, two = hs_after(seed, 1), hs_after(seed, 2)
        worst = max(worst, abs(one["hs_after"] - two["hs_after"]))
        print(
            f"| {seed} | {100 * one['hs_after']:.1f} | {100 * two['hs_after']:.1f} | "
            f"{100 * (two['hs_after'] - one['hs_after']):+.1f} | {one['harmful_nll_after']:.6f} / "
            f"{two['harmful_nll_after']:.6f} |"
        )
    print(f"\nlargest difference in HS after: {100 * worst:.1f} points")


if __name__ == "__main__":
    main()
