"""Cost of one training step of each defense relative to an `sft` step, in one process.

    python benchmarks/step_cost.py [--repeats 15]

Setting (the issue's measurement of the official implementations): a 4-layer, hidden-128
Llama, a 16 x 48 batch, forward + backward, no optimizer step, LoRA attached as in training.
Time: median over `repeats` steps, the defenses interleaved round-robin so that machine noise
hits all of them alike. Memory: bytes autograd saves for backward during the step (activations,
not parameters), summed over the step's passes, an upper bound on activation memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from immunity.defenses.booster import Booster, BoosterConfig
from immunity.defenses.circuit_breakers import CircuitBreakers, CircuitBreakersConfig
from immunity.defenses.repnoise import RepNoise, RepNoiseConfig
from immunity.defenses.t_vaccine import TVaccine, TVaccineConfig
from immunity.defenses.vaccine import Vaccine, VaccineConfig
from immunity.models import attach_lora, build_model
from immunity.training import lm_loss

VOCAB, BATCH, LENGTH = 1263, 16, 48


def random_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (BATCH, LENGTH), generator=g)
    labels = ids.clone()
    labels[:, : LENGTH // 2] = -100  # prompt half masked, as in alignment data
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def forever(batch):
    while True:
        yield batch


def step_functions(model, harmful):
    booster = Booster(BoosterConfig())
    booster.harmful = forever(harmful)
    repnoise = RepNoise(RepNoiseConfig())
    repnoise.harmful = forever(harmful)
    cb = CircuitBreakers(CircuitBreakersConfig())
    cb.retain, cb.targets, cb.step = forever(harmful), (1, 3), 1
    # T-Vaccine with its default S = depth // 4 = 1 layer; the sampled layer is the second of
    # four, so the two above it run checkpointed (an average case, fixed for repeatability).
    tvaccine = TVaccine(TVaccineConfig())
    tvaccine.scores, tvaccine.active, tvaccine.step = torch.full((4,), 0.25), [1], 1
    return {
        "sft": lm_loss,
        "vaccine": Vaccine(VaccineConfig()).step_loss,
        "t-vaccine": tvaccine.step_loss,
        "booster": booster.step_loss,
        "repnoise": repnoise.step_loss,
        "circuit-breakers": cb.step_loss,
    }


class SavedBytes:
    """Sums the bytes of non-parameter tensors autograd saves for backward."""

    def __init__(self, model):
        self.params = {p.data_ptr() for p in model.parameters()}
        self.total = 0

    def pack(self, t):
        if t.data_ptr() not in self.params:
            self.total += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def run_step(model, fn, batch):
    out = fn(model, batch)
    loss = out[0] if isinstance(out, tuple) else out
    if loss is not None:  # T-Vaccine runs its own backward
        loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = attach_lora(build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0), r=16, alpha=32)
    model.train()
    batch, harmful = random_batch(0), random_batch(1)
    fns = step_functions(model, harmful)
    times = {name: [] for name in fns}
    memory = {}
    for name, fn in fns.items():  # warm-up and memory
        with SavedBytes(model) as saved:
            run_step(model, fn, batch)
        memory[name] = saved.total
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            run_step(model, fn, batch)
            times[name].append(time.perf_counter() - start)
    base_t, base_m = statistics.median(times["sft"]), memory["sft"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x{LENGTH}, "
          f"{args.repeats} repeats\n")
    print("| defense | step ms | x sft time | saved activations MiB | x sft memory |")
    print("|---|---|---|---|---|")
    for name in fns:
        t = statistics.median(times[name])
        print(f"| {name} | {1000 * t:.1f} | {t / base_t:.2f} | {memory[name] / 2**20:.1f} | "
              f"{memory[name] / base_m:.2f} |")


if __name__ == "__main__":
    main()
