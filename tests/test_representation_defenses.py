"""Mechanics of the representation-space defenses, each against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from immunity.config import load_run_config
from immunity.defenses.antidote import input_norms, pruned_layers, wanda_prune, weight_matrix
from immunity.defenses.booster import booster_loss
from immunity.defenses.circuit_breakers import coefficients, default_targets, rerouting_loss, retain_loss
from immunity.defenses.repnoise import repnoise_terms
from immunity.defenses.t_vaccine import layer_scores, sample_layers
from immunity.defenses.vaccine import attention_gradients, perturbations, perturbed_loss
from immunity.engine.pipeline import run
from immunity.models import ARCHITECTURES, attach_lora, decoder_layers
from immunity.training import edit_block_outputs, lm_loss
from immunity.training.losses import mmd, token_ce


def _hooks_left(model):
    return sum(len(m._forward_hooks) for m in model.modules())


# -- Vaccine ------------------------------------------------------------------------------
def test_vaccine_perturbation_has_global_norm_rho_along_the_gradient(tiny_model, align_batch):
    model = tiny_model()
    batch = align_batch()
    loss, grads = attention_gradients(model, batch)
    assert sorted(grads) == [0, 1, 2] and _hooks_left(model) == 0

    # g_l is really dL/de_l: central finite difference along a random direction of layer 1.
    u = torch.randn_like(grads[1])

    def loss_with(delta):
        with edit_block_outputs(model, "attention", lambda i, out: out + delta * u if i == 1 else None):
            return lm_loss(model, batch).item()

    fd = (loss_with(1e-5) - loss_with(-1e-5)) / 2e-5
    assert math.isclose(fd, (grads[1] * u).sum().item(), rel_tol=1e-5)

    rho = 2.0
    eps = perturbations(grads, rho)
    g_norm = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
    for i in grads:  # same scale on every layer: one global norm, direction g
        assert torch.allclose(eps[i], grads[i] * rho / (g_norm + 1e-7), atol=1e-12)

    # To first order the perturbed loss rises by rho * ||g||.
    small = perturbations(grads, 1e-4)
    rise = perturbed_loss(model, batch, small).item() - loss.item()
    assert math.isclose(rise, 1e-4 * g_norm, rel_tol=1e-3)
    assert _hooks_left(model) == 0


# -- Booster ------------------------------------------------------------------------------
def test_booster_gradient_is_autograd_of_its_first_order_objective(tiny_model, align_batch, harmful_batch):
    model = tiny_model()
    align, harmful = align_batch(), harmful_batch(4, 6)
    lam, alpha = 5.0, 0.1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Independent: F(w) = f(w) + lam * [h(w) - h(w - alpha * sg(grad h / (||grad h|| + 1e-7)))].
    params = dict(model.named_parameters())

    def loss_at(weights, batch):
        logits = functional_call(
            model, weights, args=(batch["input_ids"],), kwargs={"attention_mask": batch["attention_mask"]}
        ).logits
        return token_ce(logits, batch["labels"])

    grad_h = torch.autograd.grad(loss_at(params, harmful), list(params.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad_h))
    shifted = {n: p - alpha * g.detach() / (norm + 1e-7) for (n, p), g in zip(params.items(), grad_h)}
    objective = loss_at(params, align) + lam * (loss_at(params, harmful) - loss_at(shifted, harmful))
    expected = torch.autograd.grad(objective, list(params.values()))

    written, shown = booster_loss(model, align, harmful, lam, alpha)
    assert written is None  # the step wrote the gradient itself, as the reference's does
    for (name, p), e in zip(model.named_parameters(), expected):
        assert torch.equal(p.detach(), before[name]), f"{name} not restored bit-for-bit"
        assert torch.allclose(p.grad, e, atol=1e-10, rtol=1e-7), name
    assert math.isclose(shown, loss_at(params, align).item(), rel_tol=1e-9)


# -- RepNoise -----------------------------------------------------------------------------
def _brute_mmd(x, y, kernels=5, multiplier=2.0):
    z = torch.cat([x, y]).double()
    n = len(z)
    sq = [[float(((z[i] - z[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    bandwidth = sum(sum(row) for row in sq) / (n * n - n)
    widths = [bandwidth * multiplier ** (i - kernels // 2) for i in range(kernels)]
    k = [[sum(math.exp(-sq[i][j] / w) for w in widths) for j in range(n)] for i in range(n)]

    def block(rows, cols):
        return sum(k[i][j] for i in rows for j in cols) / (len(rows) * len(cols))

    xs, ys = range(len(x)), range(len(x), n)
    return block(xs, xs) + block(ys, ys) - 2 * block(xs, ys)


def test_mmd_matches_brute_force_kernel_sums():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 1.0
    assert math.isclose(mmd(x, y).item(), _brute_mmd(x, y), rel_tol=1e-10)
    assert mmd(x, x.clone()).item() < 1e-12


def test_repnoise_terms_match_an_independent_computation(world, tiny_model, harmful_batch):
    model = tiny_model("llama")
    harmful = harmful_batch(0, 6)
    model(**harmful, output_hidden_states=True)  # transformers installs its own capture hooks lazily
    hooks = _hooks_left(model)
    torch.manual_seed(5)
    noise_mmd, ascent = repnoise_terms(model, harmful)
    assert _hooks_left(model) == hooks

    # Independent: MLP outputs by hand, one flattened masked sequence per sample, the same noise.
    captured = []
    handles = [layer.mlp.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in decoder_layers(model)]
    out = model(**harmful, output_hidden_states=True)
    for h in handles:
        h.remove()
    tokens = (harmful["labels"] != -100)[..., None].to(out.logits.dtype)
    torch.manual_seed(5)
    noises = [torch.randn_like(h) for h in captured]
    expected_mmd = sum(
        _brute_mmd((h * tokens).flatten(1).detach(), (e * tokens).flatten(1)) for h, e in zip(captured, noises)
    ) / len(captured)
    assert math.isclose(noise_mmd.item(), expected_mmd, rel_tol=1e-4)

    keep = harmful["labels"][:, 1:] != -100
    targets = harmful["labels"][:, 1:][keep]
    norm, head = model.model.norm, model.lm_head
    ces = [F.cross_entropy(out.logits[:, :-1][keep].float(), targets)]
    ces += [F.cross_entropy(head(norm(h))[:, :-1][keep].float(), targets) for h in out.hidden_states]
    assert len(ces) == len(decoder_layers(model)) + 2  # output + embedding output + every layer
    assert math.isclose(ascent.item(), sum(c.item() for c in ces) / (len(ces) - 1) + 1, rel_tol=1e-5)


# -- Circuit Breakers ---------------------------------------------------------------------
def test_circuit_breaker_schedule_targets_and_losses_match_brute_force():
    assert coefficients(0, 150, 10.0) == (10.0, 0.0)
    c_rr, c_retain = coefficients(150, 150, 10.0)
    assert math.isclose(c_rr, 5.0) and math.isclose(c_retain, 5.0)  # stops halfway, as the reference
    assert default_targets(32) == (10, 20) and default_targets(4) == (1, 2)

    torch.manual_seed(1)
    states = [torch.randn(2, 5, 4, dtype=torch.float64) for _ in range(4)]
    originals = [torch.randn(2, 5, 4, dtype=torch.float64) for _ in range(4)]
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                count += 1
                for layer in (1, 3):
                    s, o = states[layer][b, t], originals[layer][b, t]
                    total += max(0.0, (s @ o / (s.norm() * o.norm())).item())
    # divided by #target layers x #tokens, as the reference's stacked mask sum
    assert math.isclose(rerouting_loss(states, originals, mask, (1, 3)).item(), total / (2 * count), rel_tol=1e-10)

    # retain: mean over all states and all positions, masked positions contributing zero
    distances = [
        (states[l][b, t] - originals[l][b, t]).norm().item() if mask[b, t] else 0.0
        for l in range(4)
        for b in range(2)
        for t in range(5)
    ]
    assert math.isclose(retain_loss(states, originals, mask).item(), sum(distances) / len(distances), rel_tol=1e-10)


# -- Antidote -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_antidote_prunes_exactly_the_top_wanda_share_of_the_attack_adapter(arch, tiny_model, harmful_batch):
    model = attach_lora(tiny_model(arch, torch.float32), r=8, alpha=16, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained-looking adapter
    calib = [harmful_batch(0, 5)]
    modules = pruned_layers(model)
    assert modules and all(".lora_A." in n or ".lora_B." in n for n in modules)
    assert len(modules) == 2 * sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))

    captured = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=n: captured.__setitem__(n, a[0].detach()))
        for n, m in modules.items()
    ]
    model(input_ids=calib[0]["input_ids"], attention_mask=calib[0]["attention_mask"])
    for h in handles:
        h.remove()
    keep = calib[0]["attention_mask"].bool()
    norms = input_norms(model, modules, calib)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ratio = 0.25
    for name, module in modules.items():
        x = captured[name][keep].double()
        assert torch.allclose(norms[name], x.pow(2).sum(0).sqrt())
        w = weight_matrix(module).detach().clone()
        wanda_prune(weight_matrix(module).data, norms[name], ratio)
        pruned = weight_matrix(module).detach()
        columns = w.shape[1]
        n_pruned = columns - int(columns * (1 - ratio))  # the reference's count
        for row in range(w.shape[0]):
            scores = [(abs(w[row, j].item()) * norms[name][j].item(), j) for j in range(columns)]
            top = {j for _, j in sorted(scores, reverse=True)[:n_pruned]}
            assert {j for j in range(columns) if pruned[row, j] == 0 and w[row, j] != 0} == top
            untouched = [j for j in range(columns) if j not in top]
            assert torch.equal(pruned[row, untouched], w[row, untouched])
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p, before[name]), f"{name} is not an adapter factor but changed"


def test_antidote_after_full_fine_tuning_prunes_qkv_only(tiny_model):
    names = set(pruned_layers(tiny_model("llama", torch.float32)))
    assert names and {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj"}


# -- T-Vaccine ----------------------------------------------------------------------------
def test_t_vaccine_samples_layers_in_proportion_to_scores():
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(4)
    for _ in range(draws):
        counts[sample_layers(probabilities, 1, g)] += 1
    assert torch.allclose(counts / draws, probabilities.float(), atol=0.015)
    two = [tuple(sample_layers(probabilities, 2, g)) for _ in range(2000)]
    assert all(len(set(t)) == 2 for t in two)  # without replacement
    freq = [sum(i in t for t in two) for i in range(4)]
    assert freq == sorted(freq)  # a layer with a higher score is in the sample more often


def test_t_vaccine_scores_are_harmful_gradient_norm_shares(tiny_model, harmful_batch):
    model = tiny_model()
    harmful = harmful_batch(0, 1)
    scores = layer_scores(model, harmful)
    _, grads = attention_gradients(model, harmful)
    norms = torch.tensor([grads[i].norm().item() for i in range(3)], dtype=torch.float64)
    assert torch.allclose(scores, norms / norms.sum())


# -- End to end ---------------------------------------------------------------------------
REPRESENTATION_DEFENSES = ("vaccine", "t-vaccine", "booster", "repnoise", "circuit-breakers", "antidote")


@pytest.mark.integration
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("defense", REPRESENTATION_DEFENSES)
def test_defense_runs_on_tiny_architectures(arch, defense, tiny_architecture):
    overrides = tiny_architecture(arch)
    if defense in ("vaccine", "t-vaccine", "booster", "repnoise"):
        overrides.append("defense.epochs=0.05")
    if defense == "circuit-breakers":
        overrides.append("defense.steps=3")
    result = run(load_run_config(None, overrides, defense=defense, seed=0), progress=False)
    assert result["defense"] == defense and result["harmful_nll_after"] != result["harmful_nll_before"]
    if defense == "antidote":
        assert result["defense_notes"]["pruned"] == "adapter factors" and result["defense_notes"]["pruned_weights"] > 0
