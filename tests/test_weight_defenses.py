"""Mechanics of the weight-space and meta-learning defenses, each against an independent computation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from immunity.config import load_run_config
from immunity.data import IGNORE
from immunity.defenses import condition_number as cn
from immunity.defenses.lox import LoX, LoXConfig, effective_rank, extrapolated_weights
from immunity.defenses.mlac import mlac_objective
from immunity.defenses.ntl import ntl_loss
from immunity.defenses.sophon import fts_gradient, suppression_loss
from immunity.defenses.tar import negative_entropy, tamper_gradient, tamper_weights
from immunity.engine.pipeline import run
from immunity.models import ARCHITECTURES
from immunity.training import lm_loss
from immunity.training.losses import answer_mask


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


# -- MLAC ---------------------------------------------------------------------------------
@pytest.fixture
def mlac_setup(tiny_model, align_batch, harmful_batch):
    model = tiny_model()
    params = {n: p for n, p in model.named_parameters()}
    return model, params, align_batch(), [harmful_batch(4 * k) for k in range(3)]  # K = 2 inner steps


def test_mlac_second_order_meta_gradient_matches_finite_difference(world, mlac_setup):
    model, params, desired, harmful = mlac_setup
    lr, bound = 0.5, math.log(len(world.tokenizer))  # a large inner step makes second-order terms matter
    objective, _ = mlac_objective(model, params, desired, harmful, lr, 1.0, first_order=False, bound=bound)
    grads = torch.autograd.grad(objective, list(params.values()))
    first, _ = mlac_objective(model, params, desired, harmful, lr, 1.0, first_order=True, bound=bound)
    first_grads = torch.autograd.grad(first, list(params.values()))

    torch.manual_seed(1)
    direction = [torch.randn_like(p) for p in params.values()]

    def j_at(eps):
        with torch.no_grad():
            for p, d in zip(params.values(), direction):
                p.add_(eps * d)
        value = mlac_objective(model, params, desired, harmful, lr, 1.0, first_order=False, bound=bound)[0].item()
        with torch.no_grad():
            for p, d in zip(params.values(), direction):
                p.sub_(eps * d)
        return value

    fd = (j_at(1e-6) - j_at(-1e-6)) / 2e-6
    analytic = (_flat(grads) * _flat(direction)).sum().item()
    first_order = (_flat(first_grads) * _flat(direction)).sum().item()
    assert math.isclose(fd, analytic, rel_tol=1e-5)
    assert not math.isclose(fd, first_order, rel_tol=1e-3)  # the test can tell the two apart


def test_mlac_first_order_gradient_is_the_gradient_at_the_adapted_weights(mlac_setup):
    model, params, desired, harmful = mlac_setup
    lr, weight, bound = 0.5, 0.7, 2.0  # a low bound, so the clamp is active on some tokens
    objective, recorded = mlac_objective(model, params, desired, harmful, lr, weight, first_order=True, bound=bound)
    grads = torch.autograd.grad(objective, list(params.values()))

    # Independent: plain SGD on a copy; at theta_1, theta_2 the gradient of the capped CE.
    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD(twin.parameters(), lr=lr)
    expected = [g.clone() for g in torch.autograd.grad(lm_loss(twin, desired), list(twin.parameters()))]
    for k in range(2):
        sgd.zero_grad()
        lm_loss(twin, harmful[k]).backward()
        sgd.step()
        logits = twin(input_ids=harmful[k + 1]["input_ids"], attention_mask=harmful[k + 1]["attention_mask"]).logits
        targets = harmful[k + 1]["labels"][:, 1:]
        keep = targets != IGNORE
        capped = F.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="none").clamp(max=bound).mean()
        assert math.isclose(capped.item(), recorded[k], rel_tol=1e-10)
        for e, g in zip(expected, torch.autograd.grad(capped, list(twin.parameters()))):
            e.sub_(weight / 2 * g)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-10)


# -- NTL ----------------------------------------------------------------------------------
def _brute_mmd(x, y, kernels=5, multiplier=2.0):
    z = torch.cat([x, y])
    n = len(z)
    d = [[float(((z[i] - z[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    base = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
    k = lambda i, j: sum(math.exp(-d[i][j] / (base * multiplier ** (b - kernels // 2))) for b in range(kernels))
    nx = len(x)
    xs, ys = range(nx), range(nx, n)
    mean = lambda a, b: sum(k(i, j) for i in a for j in b) / (len(a) * len(b))
    return mean(xs, xs) + mean(ys, ys) - mean(xs, ys) - mean(ys, xs)


def _pooled_by_hand(model, batch, layer):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        positions = [t for t in range(batch["labels"].shape[1] - 1) if batch["labels"][i, t + 1] != IGNORE]
        rows.append(torch.stack([out.hidden_states[layer + 1][i, t] for t in positions]).mean(0))
    return torch.stack(rows)


def test_ntl_loss_is_clamped_product_with_brute_force_mmd(tiny_model, align_batch, harmful_batch):
    model = tiny_model()
    source, target = align_batch(0, 3), harmful_batch(10, 5)
    classes = 10
    with torch.no_grad():
        loss, parts = ntl_loss(model, source, target, alpha=0.1, beta=0.1, layer=1, classes=classes)
        distance = _brute_mmd(_pooled_by_hand(model, source, 1), _pooled_by_hand(model, target, 1))
        l_src, l_tgt = lm_loss(model, source).item(), lm_loss(model, target).item()
    assert math.isclose(parts["mmd"], distance, rel_tol=1e-9)
    assert math.isclose(loss.item(), l_src - min(0.1 * l_tgt, classes) * min(0.1 * distance, 1), rel_tol=1e-9)

    # Clamps: with both factors past their bounds the penalty is exactly C and passes no gradient.
    loss, _ = ntl_loss(model, source, target, alpha=1e3, beta=1e6, layer=1, classes=classes)
    assert math.isclose(loss.item(), l_src - classes, rel_tol=1e-9)
    params = list(model.parameters())
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(lm_loss(model, source), params, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.allclose(g, w)


# -- SOPHON -------------------------------------------------------------------------------
def test_sophon_suppression_losses_match_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE], [IGNORE, 2, 6, 0, 4]])
    p, inverse, kl = logits.softmax(-1), [], []
    for b in range(2):
        for t in range(4):
            y = labels[b, t + 1].item()
            if y != IGNORE:
                inverse.append(-math.log(1 - p[b, t, y].item()))
                kl.append(sum((1 / 7) * math.log((1 / 7) / p[b, t, v].item()) for v in range(7)))
    assert math.isclose(suppression_loss(logits, labels, "inverse").item(), sum(inverse) / len(inverse), rel_tol=1e-9)
    assert math.isclose(suppression_loss(logits, labels, "uniform").item(), sum(kl) / len(kl), rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["inverse", "uniform"])
def test_sophon_first_order_gradient_is_mean_of_query_gradients_at_adapted_weights(tiny_model, harmful_batch, kind):
    model = tiny_model()
    params = dict(model.named_parameters())
    support = [harmful_batch(0), harmful_batch(4)]
    query = [harmful_batch(20, 3), harmful_batch(30, 5)]  # different token counts: weighted mean
    before = {n: p.detach().clone() for n, p in params.items()}
    grads, value = fts_gradient(model, params, support, query, inner_lr=0.3, kind=kind)
    for n, p in params.items():
        assert torch.equal(p, before[n])  # the original weights are not touched

    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.3)
    expected = [torch.zeros_like(p) for p in twin.parameters()]
    counts, values = [], []
    for s, q in zip(support, query):
        sgd.zero_grad()
        lm_loss(twin, s).backward()
        sgd.step()
        logits = twin(input_ids=q["input_ids"], attention_mask=q["attention_mask"]).logits
        loss = suppression_loss(logits, q["labels"], kind)
        n = int((q["labels"][:, 1:] != IGNORE).sum())
        for e, g in zip(expected, torch.autograd.grad(loss, list(twin.parameters()), allow_unused=True)):
            if g is not None:
                e.add_(n * g)
        counts.append(n)
        values.append(n * loss.item())
    assert math.isclose(value, sum(values) / sum(counts), rel_tol=1e-10)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e / sum(counts), atol=1e-10)


# -- TAR ----------------------------------------------------------------------------------
def test_tar_entropy_is_masked_to_answer_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5, dtype=torch.float64)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2, IGNORE, IGNORE], [IGNORE, 4, 0, 3, 1, 2]])
    mask = answer_mask(labels)
    expected = []
    for b, t in mask.nonzero().tolist():
        p = logits[b, t].softmax(-1)
        expected.append(float((p * p.log()).sum()))
    assert math.isclose(negative_entropy(logits, labels).item(), sum(expected) / len(expected), rel_tol=1e-12)
    changed = logits.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10  # prompt and padding positions
    assert torch.equal(negative_entropy(changed, labels), negative_entropy(logits, labels))


def test_tar_weights_sum_to_the_reference_total():
    weights = tamper_weights(16, 4, 17.75, 0.25)
    assert sorted(weights) == [3, 7, 11, 15] and math.isclose(sum(weights.values()), 17.75)
    assert math.isclose(weights[15] / weights[11], math.exp(1.0))
    # the reference's own schedule (K = 64, s = 4, 4 exp(0.0625 (k - 63))) totals 17.75 too
    reference = sum(4 * math.exp(0.0625 * (k - 63)) for k in range(64) if (k + 1) % 4 == 0)
    assert math.isclose(reference, 17.752, rel_tol=1e-4)


def test_tar_tamper_gradient_is_weighted_sum_at_attacked_weights_and_restores_bitwise(tiny_model, harmful_batch):
    model = tiny_model()
    params = list(model.parameters())
    adversary = [harmful_batch(4 * k) for k in range(4)]
    tr_batch = harmful_batch(40, 3)
    before = [p.detach().clone() for p in params]
    weights = {1: 4.0 * math.exp(-1.0), 3: 4.0}
    buffer, losses = tamper_gradient(model, params, adversary, tr_batch, lr=1e-2, weights=weights)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # bit-identical after the inner loop
    assert all(p.grad is None for p in params)

    # Independent replay: AdamW on a copy, snapshots after steps 2 and 4, entropy on the same TR batch.
    twin = copy.deepcopy(model)
    adam = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.0)
    expected = [torch.zeros_like(p) for p in params]
    replay_losses = []
    for k, batch in enumerate(adversary):
        adam.zero_grad()
        lm_loss(twin, batch).backward()
        adam.step()
        if k in (1, 3):
            logits = twin(input_ids=tr_batch["input_ids"], attention_mask=tr_batch["attention_mask"]).logits
            p = logits[answer_mask(tr_batch["labels"])].softmax(-1)
            neg_h = (p * p.log()).sum(-1).mean()
            replay_losses.append(neg_h.item())
            for e, g in zip(expected, torch.autograd.grad(neg_h, list(twin.parameters()))):
                e.add_(weights[k] * g)
    assert losses == pytest.approx(replay_losses, rel=1e-10)
    for b, e in zip(buffer, expected):
        assert torch.allclose(b, e, atol=1e-10)


# -- Condition number ---------------------------------------------------------------------
def test_condition_number_regularisers_match_eigenvalue_formulas():
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64)
    s = cn.feature_hessian(x)
    assert torch.allclose(s, x.T @ x / 40)
    sigma = torch.linalg.eigvalsh(s + 1e-6 * torch.eye(6, dtype=torch.float64))
    mean_sq = float((s @ s).trace()) / 6  # ||S||_F^2 / K without eigenvalues (or the 1e-6 shift)
    assert math.isclose(cn.r_well(s).item(), sigma[-1].item() ** 2 / 2 - mean_sq / 2, rel_tol=1e-4)
    assert math.isclose(cn.r_ill(s).item(), 1 / (mean_sq / 2 - sigma[0].item() ** 2 / 2), rel_tol=1e-4)
    assert math.isclose(cn.condition_number(s), (sigma[-1] / sigma[0]).item(), rel_tol=1e-9)


def _fit_features(objective, steps=300):
    """Adam on a linear feature map W (X = Z W) under `objective(W)`, from a fixed start."""
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.eye(10, dtype=torch.float64) + 0.1 * torch.randn(10, 10, dtype=torch.float64))
    start = w.detach().clone()
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        objective(w).backward()
        opt.step()
    return start, w.detach()


def test_condition_number_regularisers_move_kappa_the_right_way_on_a_toy_problem():
    torch.manual_seed(0)
    benign = torch.randn(200, 10, dtype=torch.float64)
    harmful = torch.randn(200, 10, dtype=torch.float64) * torch.linspace(0.5, 2, 10, dtype=torch.float64)
    kappa = lambda z, w: cn.condition_number(cn.feature_hessian(z @ w))

    start, w = _fit_features(lambda w: cn.r_well(cn.feature_hessian(benign @ w)))
    assert kappa(benign, w) < kappa(benign, start) / 2  # R_well conditions the benign features

    start, w = _fit_features(lambda w: cn.r_ill(cn.feature_hessian(harmful @ w)))
    assert kappa(harmful, w) > 2 * kappa(harmful, start)  # R_ill ill-conditions the harmful ones

    # Together, on one shared feature map: benign kappa falls and harmful kappa grows relative to it.
    start, w = _fit_features(
        lambda w: cn.r_well(cn.feature_hessian(benign @ w)) + cn.r_ill(cn.feature_hessian(harmful @ w))
    )
    assert kappa(benign, w) < kappa(benign, start) / 2
    assert kappa(harmful, w) / kappa(benign, w) > 2 * kappa(harmful, start) / kappa(benign, start)


# -- LoX ----------------------------------------------------------------------------------
class _Context:
    def __init__(self, base, hs):
        self.base_model, self.hs, self.notes = base, hs, {}

    def note(self, **values):
        self.notes.update(values)

    def validation(self, model, sets):
        return {"hs": self.hs(model)}


def _aligned_pair(tiny_model, arch):
    base = tiny_model(arch, torch.float32)
    aligned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in aligned.parameters():
            if p.ndim == 2:  # a rank-5 alignment update on every matrix
                p.add_(torch.randn(p.shape[0], 5, generator=g) @ torch.randn(5, p.shape[1], generator=g) * 0.01)
            else:
                p.add_(0.01)
    return base, aligned


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lox_adds_alpha_times_the_rank_k_svd_of_the_alignment_update(tiny_model, arch):
    base, aligned = _aligned_pair(tiny_model, arch)
    before = {n: p.detach().clone() for n, p in aligned.named_parameters()}
    base_params = dict(base.named_parameters())
    released = LoX(LoXConfig(k=2, alpha=1.25)).apply(aligned, _Context(base, None))
    for name, p in released.named_parameters():
        if p.ndim < 2:
            assert torch.equal(p, before[name])
            continue
        added = (p.detach() - before[name]).double() / 1.25
        assert torch.linalg.matrix_rank(added, rtol=1e-4).item() == 2
        delta = (before[name] - base_params[name].detach()).double()
        u, s, vh = torch.linalg.svd(delta)
        assert torch.allclose(added, (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)

    base, aligned = _aligned_pair(tiny_model, arch)
    embedding = aligned.get_input_embeddings().weight.detach().clone()
    LoX(LoXConfig(k=0, alpha=2.0, include_embeddings=False)).apply(aligned, _Context(base, None))
    assert torch.equal(aligned.get_input_embeddings().weight, embedding)


def test_lox_effective_rank_is_the_smallest_k_that_keeps_hs(tiny_model):
    base, aligned = _aligned_pair(tiny_model, "llama")
    target = extrapolated_weights(base, aligned, 3, 1.0, reconstruct=True)
    # HS stays low only when the reconstruction is at least as close to `aligned` as rank 3 is.
    gap = lambda m: sum((dict(m.named_parameters())[n] - aligned.get_parameter(n)).norm().item() for n in target)
    rank3 = gap(_with(aligned, target))
    context = _Context(base, lambda m: 0.0 if gap(m) <= rank3 * (1 + 1e-6) else 0.5)
    assert effective_rank(base, aligned, context, LoXConfig(rank_tolerance=0.01)) == 3


def _with(model, weights):
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for n, w in weights.items():
            twin.get_parameter(n).copy_(w)
    return twin


# -- End to end ---------------------------------------------------------------------------
WEIGHT_DEFENSES = {
    "mlac": ["defense.epochs=0.05", "defense.inner_steps=2"],
    "ntl": ["defense.epochs=0.05"],
    "sophon": ["defense.loops=2", "defense.inner_steps=2", "defense.check_every=1"],
    "tar": ["defense.outer_steps=2", "defense.inner_steps=4"],
    "condition-number": ["defense.epochs=0.05"],
    "lox": ["defense.search_rank=true"],
    "scratch": [],
}


@pytest.mark.integration
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("defense", WEIGHT_DEFENSES)
def test_weight_defense_runs_on_tiny_architectures(arch, defense, tiny_architecture):
    overrides = tiny_architecture(arch) + WEIGHT_DEFENSES[defense]
    result = run(load_run_config(None, overrides, defense=defense, seed=0), progress=False)
    assert result["defense"] == defense and result["harmful_nll_after"] != result["harmful_nll_before"]
    if defense == "lox":
        assert result["defense_notes"]["k"] in (0, 1, 2, 3, 4, 6, 8)
    if defense == "sophon":
        assert set(result["defense_notes"]) == {"loops", "stopped_at"}


def test_lox_gives_stacked_expert_weights_a_rank_k_update_per_expert():
    from immunity.defenses.lox import low_rank

    torch.manual_seed(0)
    delta = torch.randn(3, 6, 5)
    update = low_rank(delta, 2)
    for expert in range(3):
        u, s, vh = torch.linalg.svd(delta[expert], full_matrices=False)
        assert torch.allclose(update[expert], (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
        assert torch.linalg.matrix_rank(update[expert]).item() == 2
