"""Cost of one training step of each defense relative to an `sft` step, in one process.

    python benchmarks/step_cost.py [--repeats 15]

Part 1, representation defenses: one step each.
Part 2, weight-space and meta-learning defenses: one outer step, against the method's ideal
count of SFT-step equivalents (forward + backward passes its algorithm needs; a reference
forward counts 1/3), and LoX's wall time per million matrix parameters.

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

from immunity.defenses.booster import BoosterConfig, booster_loss
from immunity.defenses.circuit_breakers import CircuitBreakersConfig, circuit_breaker_step
from immunity.defenses.repnoise import RepNoiseConfig, repnoise_loss
from immunity.defenses.t_vaccine import TVaccineConfig, t_vaccine_step
from immunity.defenses.vaccine import VaccineConfig, vaccine_loss
from immunity.models import attach_lora, build_model
from immunity.training import lm_loss

VOCAB, BATCH, LENGTH = 1263, 16, 48
T_VACCINE = "t-vaccine (sampled layer"


def random_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (BATCH, LENGTH), generator=g)
    labels = ids.clone()
    labels[:, : LENGTH // 2] = -100  # prompt half masked, as in alignment data
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def booster_official(model, batch, harmful, lam, alpha):
    """Booster's step as the reference structures it (git-disl/Booster `trainer.py`,
    `BoosterAlignmentTrainer.training_step`, re-derived): backward on the harmful loss into
    `.grad`, copy; perturb the trainable weights along the normalised gradient, backward again,
    copy; restore; backward on the alignment loss; add lambda (g_h - g_h~) to `.grad`."""
    params = [p for p in model.parameters() if p.requires_grad]
    lm_loss(model, harmful).backward()
    grad_h = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad_h))
    with torch.no_grad():
        for p, g in zip(params, grad_h):
            p.sub_(alpha * g / (norm + 1e-7))
    lm_loss(model, harmful).backward()
    grad_h_tilde = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, g in zip(params, grad_h):
            p.add_(alpha * g / (norm + 1e-7))
    loss = lm_loss(model, batch)
    loss.backward()
    with torch.no_grad():
        for p, a, b in zip(params, grad_h, grad_h_tilde):
            p.grad.add_(lam * (a - b))
    return None, loss.item()


def vaccine_official(model, batch, rho):
    """Vaccine's step as the reference structures it (git-disl/Vaccine `trainer.py`,
    `VaccineTrainer.training_step`, re-derived): a full backward pass with backward hooks storing
    each attention output's gradient, zero the weight gradients, then a second forward with the
    perturbation added by forward hooks and its backward."""
    from immunity.training import edit_block_outputs

    grads = {}

    def capture(index, output) -> None:
        output.register_hook(lambda g, index=index: grads.__setitem__(index, g.detach()))
        return None

    with edit_block_outputs(model, "attention", capture):
        lm_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    with edit_block_outputs(model, "attention", lambda i, out: out + rho * grads[i] / (norm + 1e-7)):
        loss = lm_loss(model, batch)
    loss.backward()
    return None, loss.item()


def step_functions(model, harmful):
    """One step of each representation defense as `fn(model, batch)`, on the same LoRA model."""
    b, r, cb, tv = BoosterConfig(), RepNoiseConfig(), CircuitBreakersConfig(), TVaccineConfig()
    fns = {"sft": lm_loss, "vaccine": lambda m, x: vaccine_loss(m, x, VaccineConfig().rho)}
    # T-Vaccine with its default S = depth // 4 = 1 layer. Its cost depends on where the sampled
    # layer sits (the inactive layers above it run checkpointed, those below need no backward),
    # so each of the four positions is measured; main() adds their mean, the expected cost when
    # the scores are uniform.
    for layer in range(4):
        fns[f"{T_VACCINE} {layer + 1} of 4)"] = lambda m, x, layer=layer: t_vaccine_step(m, x, [layer], tv.rho)
    return fns | {
        "vaccine (reference's step structure)": lambda m, x: vaccine_official(m, x, VaccineConfig().rho),
        "booster": lambda m, x: booster_loss(m, x, harmful, b.lam, b.alpha),
        "booster (reference's step structure)": lambda m, x: booster_official(m, x, harmful, b.lam, b.alpha),
        "repnoise": lambda m, x: repnoise_loss(m, x, harmful, r.alpha, r.beta),
        "circuit-breakers": lambda m, x: circuit_breaker_step(m, x, harmful, 1, cb.steps, cb.alpha, (1, 2)),
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
    model = attach_lora(build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0), r=16, alpha=32, seed=0)
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
    rows = {name: (statistics.median(times[name]), memory[name]) for name in fns}
    positions = [v for k, v in rows.items() if k.startswith(T_VACCINE)]
    rows[f"{T_VACCINE}: mean over positions)"] = tuple(statistics.mean(c) for c in zip(*positions))
    base_t, base_m = rows["sft"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x{LENGTH}, "
        f"{args.repeats} repeats\n"
    )
    print("### Representation-space defenses (one step)\n")
    print("| defense | step ms | x sft time | saved activations MiB | x sft memory |")
    print("|---|---|---|---|---|")
    for name, (t, m) in rows.items():
        print(f"| {name} | {1000 * t:.1f} | {t / base_t:.2f} | {m / 2**20:.1f} | {m / base_m:.2f} |")
    for method in ("vaccine", "booster"):
        ours, theirs = rows[method][0], rows[f"{method} (reference's step structure)"][0]
        print(f"\n{method}: our step / the reference's structure = {ours / theirs:.2f}x", end="")
    print()
    print("\n### Weight-space and meta-learning defenses\n")
    weight_space_table(args.repeats)


def ideal_counts() -> dict[str, float]:
    from immunity.defenses.mlac import MLACConfig
    from immunity.defenses.sophon import SophonConfig
    from immunity.defenses.tar import TARConfig

    k_mlac, k_sophon, tar = MLACConfig().inner_steps, SophonConfig().inner_steps, TARConfig()
    return {
        "ntl": 2,  # source + target pass
        "condition-number": 2,  # alignment + harmful pass (+ two d x d eigendecompositions)
        "mlac (first order)": k_mlac + 2,  # K inner passes, the pass at theta_K, the desired pass
        "mlac (second order)": k_mlac + 2,  # same passes; Hessian-vector products come on top
        "sophon": 2 * k_sophon + 1,  # K support + K query passes + 1 NTR pass
        "tar": tar.inner_steps + tar.inner_steps // tar.entropy_every + 1 + 1 / 3,
    }


def outer_steps(batch, harmful) -> dict:
    """Callables running one outer step of each weight-space defense on a fresh model."""
    from immunity.defenses.condition_number import ConditionNumberConfig, condition_number_loss
    from immunity.defenses.mlac import MLACConfig, mlac_objective
    from immunity.defenses.ntl import NTLConfig, ntl_loss
    from immunity.defenses.sophon import SophonConfig, fts_gradient
    from immunity.defenses.tar import TARConfig, retain_loss, tamper_gradient, tamper_weights

    def lora_model():
        return attach_lora(build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0), r=16, alpha=32, seed=0).train()

    def with_loss(fn):
        model = lora_model()
        return lambda: run_step(model, fn, batch)

    n, c, m = NTLConfig(), ConditionNumberConfig(), MLACConfig()

    def mlac(first_order):
        def step(model, x):
            params = {k: p for k, p in model.named_parameters() if p.requires_grad}
            return mlac_objective(
                model, params, x, [harmful] * (m.inner_steps + 1), m.inner_lr, m.harmful_weight, first_order, 7.0
            )[0]

        return step

    sophon_model, sc = lora_model(), SophonConfig()
    sophon_params = {n: p for n, p in sophon_model.named_parameters() if p.requires_grad}

    def sophon_step():
        fts_gradient(
            sophon_model,
            sophon_params,
            [harmful] * sc.inner_steps,
            [harmful] * sc.inner_steps,
            sc.inner_lr,
            sc.suppression,
        )
        run_step(sophon_model, lm_loss, batch)

    full = build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0).train()
    reference = build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0).eval()
    tc = TARConfig()
    weights = tamper_weights(tc.inner_steps, tc.entropy_every, tc.tamper_total, tc.tamper_growth)

    def tar_step():
        params = list(full.parameters())
        tamper_gradient(full, params, [harmful] * tc.inner_steps, harmful, tc.adversary_lrs[1], weights)
        retain_loss(full, reference, batch).backward()
        full.zero_grad(set_to_none=True)

    full_sft = build_model("llama", VOCAB, 128, 4, 4, 384, 64, seed=0).train()
    return {
        "sft": with_loss(lm_loss),
        "sft (full parameters)": lambda: run_step(full_sft, lm_loss, batch),
        "ntl": with_loss(lambda model, x: ntl_loss(model, x, harmful, n.alpha, n.beta, 1, VOCAB)[0]),
        "condition-number": with_loss(
            lambda model, x: condition_number_loss(model, x, harmful, c.lambda_well, c.lambda_ill)
        ),
        "mlac (first order)": with_loss(mlac(True)),
        "mlac (second order)": with_loss(mlac(False)),
        "sophon": sophon_step,
        "tar": tar_step,
    }


def lox_seconds_per_million(repeats: int) -> list[tuple[str, float, float]]:
    """LoX wall time per million matrix parameters on two model sizes (median of `repeats`)."""
    from immunity.defenses.lox import extrapolated_weights

    rows = []
    for hidden, layers in ((128, 4), (512, 8)):
        base = build_model("llama", VOCAB, hidden, layers, 4, 3 * hidden, 64, seed=0)
        aligned = build_model("llama", VOCAB, hidden, layers, 4, 3 * hidden, 64, seed=1)
        millions = sum(p.numel() for p in aligned.parameters() if p.ndim == 2) / 1e6
        times = []
        for _ in range(max(1, repeats // 5)):
            start = time.perf_counter()
            extrapolated_weights(base, aligned, 6, 1.25)
            times.append(time.perf_counter() - start)
        rows.append((f"llama h{hidden} x{layers}", millions, statistics.median(times) / millions))
    return rows


def weight_space_table(repeats: int) -> None:
    batch, harmful = random_batch(0), random_batch(1)
    fns = outer_steps(batch, harmful)
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(max(3, repeats // 3)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ideal = ideal_counts()
    lora_t, full_t = statistics.median(times["sft"]), statistics.median(times["sft (full parameters)"])
    print("| defense (one outer step) | step ms | x sft step | ideal x sft |")
    print("|---|---|---|---|")
    for name in fns:
        t = statistics.median(times[name])
        base = full_t if name in ("tar", "sft (full parameters)") else lora_t  # TAR trains all weights
        print(f"| {name} | {1000 * t:.1f} | {t / base:.2f} | {ideal.get(name, 1):.2f} |")
    print("\nTAR is compared with a full-parameter SFT step (it trains all weights); the others with a LoRA step.\n")
    print("| LoX (k=6) on | matrix params (M) | seconds per M params |")
    print("|---|---|---|")
    for label, millions, per in lox_seconds_per_million(repeats):
        print(f"| {label} | {millions:.2f} | {per:.3f} |")


if __name__ == "__main__":
    main()
