"""The GPU check (issue 13): bf16 step cost and peak memory of sft, vaccine, booster and
repnoise on randomly initialised ~100M- and ~1B-parameter Llama configs (nothing downloaded),
then one short defend -> attack -> evaluate on SafetyWorld; prints one markdown table.

    bash benchmarks/gpu_check.sh            # on a GPU machine, at most ten minutes
    python benchmarks/gpu_check.py --smoke  # the same code on a tiny float32 model (CPU test)

Step: forward + backward + AdamW on a LoRA (r 16, alpha 32, all linear maps) of a batch of
8 x 256 tokens (--smoke: 4 x 32), median of 5 steps after 2 warm-up steps; peak memory is
`torch.cuda.max_memory_allocated` during those steps, reset per method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from immunity.defenses.booster import BoosterConfig, booster_loss
from immunity.defenses.repnoise import RepNoiseConfig, repnoise_loss
from immunity.defenses.vaccine import VaccineConfig, vaccine_loss
from immunity.models import attach_lora, build_model
from immunity.training import lm_loss

VOCAB = 32000
SIZES = {  # name: (hidden, layers, heads, intermediate)
    "llama ~100M": (768, 12, 12, 2048),
    "llama ~1B": (2048, 16, 16, 5632),
}
SMOKE = {"llama tiny": (64, 2, 2, 128)}


def batch(size: int, length: int, vocab: int, seed: int, device) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (size, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def methods(harmful) -> dict:
    b, r = BoosterConfig(), RepNoiseConfig()
    return {
        "sft": lm_loss,
        "vaccine": lambda m, x: vaccine_loss(m, x, VaccineConfig().rho),
        "booster": lambda m, x: booster_loss(m, x, harmful, b.lam, b.alpha),
        "repnoise": lambda m, x: repnoise_loss(m, x, harmful, r.alpha, r.beta),
    }


def step_cost(name: str, dims: tuple, dtype, device, size: int, length: int, vocab: int) -> list[dict]:
    hidden, layers, heads, intermediate = dims
    model = build_model("llama", vocab, hidden, layers, heads, intermediate, max(length, 64), seed=0)
    params = sum(p.numel() for p in model.parameters())
    model = attach_lora(model.to(device=device, dtype=dtype), r=16, alpha=32, seed=0).train()
    x, harmful = batch(size, length, vocab, 0, device), batch(size, length, vocab, 1, device)
    rows = []
    for method, fn in methods(harmful).items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(7):
            start = time.perf_counter()
            out = fn(model, x)
            loss = out[0] if isinstance(out, tuple) else out
            if loss is not None:  # Booster writes its gradients itself
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        rows.append(
            {
                "model": f"{name} ({params / 1e6:.0f}M)",
                "method": method,
                "step_ms": 1000 * statistics.median(times),
                "peak_gib": peak,
            }
        )
    base = {r["model"]: r["step_ms"] for r in rows if r["method"] == "sft"}
    for r in rows:
        r["x_sft"] = r["step_ms"] / base[r["model"]]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def safetyworld_run(smoke: bool) -> dict:
    """One short defend -> attack -> evaluate through the CLI (sft, seed 0)."""
    extra = (
        [
            "world.model.hidden=32",
            "world.model.layers=2",
            "world.pretrain.epochs=0.05",
            "defense.epochs=0.1",
            "attack.n=48",
            "attack.epochs=1",
            "eval.max_prompts=24",
        ]
        if smoke
        else []
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "immunity", "run", "--defense", "sft", "--seed", "0", "--json", "--quiet", *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny float32 model on this machine's device")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    size, length = (4, 32) if args.smoke else (8, 256)
    sizes = SMOKE if args.smoke else SIZES
    vocab = 1263 if args.smoke else VOCAB
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {dtype}, batch {size} x {length}\n")
    print("| model | method | step ms | x sft | peak GiB |")
    print("|---|---|---|---|---|")
    for model_name, dims in sizes.items():
        for r in step_cost(model_name, dims, dtype, device, size, length, vocab):
            print(
                f"| {r['model']} | {r['method']} | {r['step_ms']:.1f} | {r['x_sft']:.2f} | {r['peak_gib']:.2f} |",
                flush=True,
            )
    run = safetyworld_run(args.smoke)
    print(
        f"\nSafetyWorld sft seed 0 (defend -> attack -> evaluate): HS before {run['hs_before']:.1f}, "
        f"after {run['hs_after']:.1f}, FA after {run['fa_after']:.1f}; {run['wall_s']:.0f} s wall, "
        f"stages {run['timings']}"
    )


if __name__ == "__main__":
    main()
