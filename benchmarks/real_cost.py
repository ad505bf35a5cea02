"""The real model's training step against the machine's limit, in one process.

    python benchmarks/real_cost.py --model models/smollm2-135m-instruct [--repeats 4] [--out FILE.json]

Measures, with the thread count it runs under (one by default, as the real track runs):
- the machine's matmul peak in float32 and in bfloat16 (square matmuls, the best of a few);
- one `sft` training step on the real model (forward + backward + AdamW, every weight trained,
  a batch of 8 x 128 random tokens, answer half of the labels masked), in float32 and under the
  `precision=bfloat16` autocast the pipeline uses, interleaved so that machine noise hits both
  alike; the median of `repeats` steps each;
- the step's achieved FLOP/s (6 x parameters x tokens for forward + backward, the usual count)
  as a share of each peak, and the bfloat16 step as a multiple of the float32 step.

With --repnoise, instead, RepNoise's training step at bfloat16 (the real track's precision) against
`sft`'s on the same alignment batch, interleaved: RepNoise as implemented (the harmless CE, the noise
MMD over every layer's MLP output and the ascent over the output and the L + 1 logit-lens
cross-entropies on the harmful batch's answer positions, as its reference computes them) and the
same step with the lens cross-entropies left out (the ascent on the output CE alone), so the page
can say how much of its cost is the lens its reference prescribes.

Prints a markdown table and, with --out, writes the numbers as JSON for the docs to read (an
existing file only with --overwrite).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoModelForCausalLM

from immunity.defenses import repnoise
from immunity.outputs import check_target, write_text_atomic
from immunity.reports.release import add_file
from immunity.training import lm_loss
from immunity.training.losses import token_ce
from immunity.training.precision import autocast

BATCH, LENGTH = 8, 128


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a square matmul (2 n^3 per product), the best of `repeats`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def random_batch(vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (BATCH, LENGTH), generator=g)
    labels = ids.clone()
    labels[:, : LENGTH // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step_seconds(model, optimizer, batch: dict, precision: str) -> float:
    start = time.perf_counter()
    with autocast(precision):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def repnoise_step_seconds(model, optimizer, batch: dict, harmful: dict | None, lens: bool) -> float:
    """One bfloat16 step: `sft`'s loss on `batch` (harmful None), or RepNoise's on `batch` and
    `harmful` (reference weights alpha 1, beta 0.001), with or without the lens cross-entropies."""
    without_lens = mock.patch.object(
        repnoise, "ascent_argument", lambda m, out, labels: token_ce(out.logits, labels) + 1
    )
    start = time.perf_counter()
    with autocast("bfloat16"), nullcontext() if lens else without_lens:
        loss = lm_loss(model, batch) if harmful is None else repnoise.repnoise_loss(model, batch, harmful, 1.0, 0.001)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def repnoise_cost(model, optimizer, repeats: int) -> dict:
    """Median seconds of `sft`'s, RepNoise's and lens-free RepNoise's step, interleaved."""
    batch, harmful = random_batch(model.config.vocab_size, 1), random_batch(model.config.vocab_size, 2)
    variants = {"sft": (None, True), "repnoise": (harmful, True), "repnoise_without_lens": (harmful, False)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for h, lens in variants.values():  # one warm-up step each
        repnoise_step_seconds(model, optimizer, batch, h, lens)
    for _ in range(repeats):
        for name, (h, lens) in variants.items():
            times[name].append(repnoise_step_seconds(model, optimizer, batch, h, lens))
    return {
        "precision": "bfloat16",
        "repeats": repeats,
        "step_seconds": {k: statistics.median(v) for k, v in times.items()},
    }


def flop_part(model, optimizer, args) -> dict:
    """`sft`'s step in float32 and bfloat16 against the matmul peaks (wants a quiet machine: the
    peaks are absolute)."""
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    parameters = sum(p.numel() for p in model.parameters())
    batch = random_batch(model.config.vocab_size, 0)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for precision in times:  # one warm-up step each
        step_seconds(model, optimizer, batch, precision)
    for _ in range(args.repeats):
        for precision in times:  # interleaved
            times[precision].append(step_seconds(model, optimizer, batch, precision))
    flops = 6 * parameters * BATCH * LENGTH
    found = {
        "threads": args.threads,
        "batch": [BATCH, LENGTH],
        "parameters": parameters,
        "peak_flops": peaks,
        "step_seconds": {k: statistics.median(v) for k, v in times.items()},
        "repeats": args.repeats,
    }
    found["achieved_flops"] = {k: flops / s for k, s in found["step_seconds"].items()}
    found["bf16_step_over_fp32"] = found["step_seconds"]["bfloat16"] / found["step_seconds"]["float32"]
    print(
        f"`sft` step on {args.model} ({parameters / 1e6:.0f}M parameters), batch {BATCH} x {LENGTH}, "
        f"{args.threads} thread(s), median of {args.repeats}:\n"
    )
    print("| precision | step s | achieved GFLOP/s | matmul peak GFLOP/s | share of its peak |")
    print("|---|---|---|---|---|")
    for precision in times:
        achieved = found["achieved_flops"][precision]
        print(
            f"| {precision} | {found['step_seconds'][precision]:.2f} | {achieved / 1e9:.1f} | "
            f"{peaks[precision] / 1e9:.1f} | {100 * achieved / peaks[precision]:.0f} % |"
        )
    print(f"\nbfloat16 step / float32 step: {found['bf16_step_over_fp32']:.2f}x")
    return found


def repnoise_part(model, optimizer, args) -> dict:
    """RepNoise's step against `sft`'s, a ratio measured interleaved (it holds on a loaded machine)."""
    found = {"threads": args.threads, "batch": [BATCH, LENGTH]} | repnoise_cost(model, optimizer, args.repeats)
    seconds = found["step_seconds"]
    print("| bfloat16 step | s | x `sft` |\n|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {value / seconds['sft']:.1f}x |")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--repnoise", action="store_true", help="RepNoise's step against sft's (bfloat16) instead")
    args = parser.parse_args()
    if args.out:
        check_target(args.out, kind="file", overwrite=args.overwrite)  # before any work
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    found = (repnoise_part if args.repnoise else flop_part)(model, optimizer, args)
    if args.out:
        write_text_atomic(args.out, json.dumps(found, indent=1) + "\n")
        if args.out.resolve().is_relative_to(Path("results/release").resolve()):
            add_file(args.out, "python benchmarks/real_cost.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
