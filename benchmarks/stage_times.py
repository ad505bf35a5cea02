"""Wall time of each demo stage (cold and warm cache) and of one SFT step on SafetyWorld.

    python benchmarks/stage_times.py [--seed 0]

Not a test: timings depend on the machine. Cold uses a fresh temporary cache (the shipped base
loads, alignment runs); warm reuses it (the aligned model loads from disk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def sft_step_seconds(seed: int, steps: int = 20) -> tuple[float, int]:
    from immunity.data import collate, from_world
    from immunity.defenses.base import DefenseContext
    from immunity.safetyworld import SafetyWorld

    world = SafetyWorld(progress=False)
    model = world.base_model()
    ctx = DefenseContext(world.tokenizer, from_world(world.data), seed, progress=False)
    feats = ctx.encode(ctx.alignment_examples())[:32]
    batch = collate(feats, world.tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    model.train()
    for _ in range(steps):
        start = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["IMMUNITY_CACHE"] = tempfile.mkdtemp(prefix="immunity-bench-")
    from immunity.config import load_run_config
    from immunity.engine.pipeline import run

    cfg = load_run_config(None, [], defense="sft", seed=args.seed)
    cfg.out_dir = tempfile.mkdtemp(prefix="immunity-bench-runs-")
    print(f"torch threads: {torch.get_num_threads()}")
    for label in ("cold", "warm"):
        start = time.perf_counter()
        timings = run(cfg, progress=False)["timings"]
        total = time.perf_counter() - start
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        print(f"{label}: total {total:.1f}s ({stages})")
    step, params = sft_step_seconds(args.seed)
    print(f"sft step (batch 32, {params / 1e6:.2f}M parameters, forward+backward+AdamW): {1000 * step:.1f} ms")


if __name__ == "__main__":
    main()
