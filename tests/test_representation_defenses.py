"""Mechanics of the representation-space defenses, each against an independent computation."""

import math

import pytest
import torch
from torch.func import functional_call

from immunity.bench.pipeline import run
from immunity.config import load_run_config
from immunity.data import collate, encode_chat
from immunity.defenses.antidote import fine_tuned_linears, input_norms, wanda_prune, weight_matrix
from immunity.defenses.booster import Booster, BoosterConfig
from immunity.defenses.circuit_breakers import coefficients, default_targets, rerouting_loss, retain_loss
from immunity.defenses.repnoise import repnoise_terms
from immunity.defenses.vaccine import attention_gradients, perturbations, perturbed_loss
from immunity.models import ARCHITECTURES, build_model, decoder_layers
from immunity.training import edit_block_outputs, lm_loss
from immunity.training.losses import mmd, token_ce
from immunity.world.generator import complied


def _model(world, arch="llama", dtype=torch.float64):
    model = build_model(arch, len(world.tokenizer), hidden=32, layers=3, heads=2, intermediate=64,
                        max_positions=64, seed=0, tokenizer=world.tokenizer)
    return model.to(dtype)


def _batch(world, examples):
    return collate([encode_chat(world.tokenizer, e.prompt, e.answer) for e in examples], world.tokenizer.pad_token_id)


def _hooks_left(model):
    return sum(len(m._forward_hooks) for m in model.modules())


# -- Vaccine ------------------------------------------------------------------------------
def test_vaccine_perturbation_has_global_norm_rho_along_the_gradient(world):
    model = _model(world, "gpt2")  # LlamaRMSNorm computes in float32; GPT-2 stays float64
    batch = _batch(world, world.data.harmful["align"][:4] + world.data.benign["align"][:4])
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
    assert math.isclose(math.sqrt(sum(e.pow(2).sum().item() for e in eps.values())), rho, rel_tol=1e-6)
    for i in grads:  # same scale on every layer: one global norm, direction g
        assert torch.allclose(eps[i], grads[i] * rho / g_norm, atol=1e-12)

    # To first order the perturbed loss rises by rho * ||g||.
    small = perturbations(grads, 1e-4)
    rise = perturbed_loss(model, batch, small).item() - loss.item()
    assert math.isclose(rise, 1e-4 * g_norm, rel_tol=1e-3)
    assert _hooks_left(model) == 0


# -- Booster ------------------------------------------------------------------------------
def test_booster_gradient_is_autograd_of_its_first_order_objective(world):
    model = _model(world, "gpt2")
    align = _batch(world, world.data.harmful["align"][:4] + world.data.benign["align"][:4])
    harmful = _batch(world, [complied(world.lexicon, e) for e in world.data.harmful["align"][4:10]])
    lam, alpha = 5.0, 0.1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Independent: F(w) = f(w) + lam * [h(w) - h(w - alpha * sg(grad h / ||grad h||))].
    params = dict(model.named_parameters())
    def loss_at(weights, batch):
        logits = functional_call(model, weights, args=(batch["input_ids"],),
                                 kwargs={"attention_mask": batch["attention_mask"]}).logits
        return token_ce(logits, batch["labels"])
    grad_h = torch.autograd.grad(loss_at(params, harmful), list(params.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad_h))
    shifted = {n: p - alpha * g.detach() / norm for (n, p), g in zip(params.items(), grad_h)}
    objective = loss_at(params, align) + lam * (loss_at(params, harmful) - loss_at(shifted, harmful))
    expected = torch.autograd.grad(objective, list(params.values()))

    booster = Booster(BoosterConfig(lam=lam, alpha=alpha))
    booster.harmful = iter([harmful])
    loss, shown = booster.step_loss(model, align)
    loss.backward()
    for (name, p), e in zip(model.named_parameters(), expected):
        assert torch.equal(p.detach(), before[name]), f"{name} not restored bit-for-bit"
        assert torch.allclose(p.grad, e, atol=1e-10, rtol=1e-7), name
    assert math.isclose(shown, loss_at(params, align).item(), rel_tol=1e-9)


# -- RepNoise -----------------------------------------------------------------------------
def test_mmd_matches_brute_force_kernel_sums():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 1.0
    z = torch.cat([x, y])
    n = len(z)
    sq = [[sum((z[i, k] - z[j, k]).item() ** 2 for k in range(3)) for j in range(n)] for i in range(n)]
    bandwidth = sum(sum(row) for row in sq) / (n * n - n)
    widths = [bandwidth * 2.0 ** (i - 2) for i in range(5)]
    k = [[sum(math.exp(-sq[i][j] / w) for w in widths) for j in range(n)] for i in range(n)]
    def block(rows, cols):
        return sum(k[i][j] for i in rows for j in cols) / (len(rows) * len(cols))
    xs, ys = range(5), range(5, 9)
    brute = block(xs, xs) + block(ys, ys) - 2 * block(xs, ys)
    assert math.isclose(mmd(x, y).item(), brute, rel_tol=1e-10)
    assert mmd(x, x.clone()).item() < 1e-12


def test_repnoise_terms_cover_every_depth_and_remove_hooks(world):
    model = _model(world)
    harmful = _batch(world, [complied(world.lexicon, e) for e in world.data.harmful["align"][:6]])
    # Independent: output CE plus the logit lens of the two intermediate layers, averaged.
    out = model(**harmful, output_hidden_states=True)
    hooks = _hooks_left(model)  # transformers keeps its own hooks for hidden-state capture
    noise_mmd, depth_ce = repnoise_terms(model, harmful)
    assert noise_mmd.item() > 0 and _hooks_left(model) == hooks
    norm, head = model.model.norm, model.lm_head
    keep = harmful["labels"][:, 1:] != -100
    targets = harmful["labels"][:, 1:][keep]
    lens = [torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets)
            for logits in [out.logits] + [head(norm(h)) for h in out.hidden_states[1:3]]]
    assert torch.allclose(depth_ce, torch.stack(lens).mean(), atol=1e-10)


# -- Circuit Breakers ---------------------------------------------------------------------
def test_circuit_breaker_schedule_and_losses_match_brute_force():
    assert coefficients(0, 150, 10.0) == (10.0, 0.0)
    c_rr, c_retain = coefficients(150, 150, 10.0)
    assert math.isclose(c_rr, 5.0) and math.isclose(c_retain, 5.0)  # stops halfway, as the reference
    assert default_targets(4) == (1, 3) and default_targets(32) == (11, 21)

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
    assert math.isclose(rerouting_loss(states, originals, mask, (1, 3)).item(), total / count, rel_tol=1e-10)

    per_layer = []
    for layer in (1, 2, 3):
        dists = [(states[layer][b, t] - originals[layer][b, t]).norm().item()
                 for b in range(2) for t in range(5) if mask[b, t]]
        per_layer.append(sum(dists) / len(dists))
    assert math.isclose(retain_loss(states, originals, mask).item(), sum(per_layer) / 3, rel_tol=1e-10)


# -- Antidote -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_antidote_prunes_exactly_the_top_wanda_share_of_fine_tuned_weights(world, arch):
    model = _model(world, arch, torch.float32)
    calib = [_batch(world, [complied(world.lexicon, e) for e in world.data.harmful["align"][:5]])]
    modules = fine_tuned_linears(model)
    assert modules and all(name.split(".")[-1] not in ("wte", "embed_tokens", "lm_head") for name in modules)

    # Independent norms: capture every linear input and sum squares over non-padding tokens.
    captured = {}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: captured.__setitem__(n, a[0].detach()))
               for n, m in modules.items()]
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
        k = int(ratio * w.shape[1])
        for row in range(w.shape[0]):
            scores = [(abs(w[row, j].item()) * norms[name][j].item(), j) for j in range(w.shape[1])]
            top = {j for _, j in sorted(scores, reverse=True)[:k]}
            zeroed = {j for j in range(w.shape[1]) if pruned[row, j] == 0 and w[row, j] != 0}
            assert zeroed == top
            untouched = [j for j in range(w.shape[1]) if j not in top]
            assert torch.equal(pruned[row, untouched], w[row, untouched])
    pruned_params = {n + ".weight" for n in modules}
    for name, p in model.named_parameters():
        if name not in pruned_params:
            assert torch.equal(p, before[name]), f"{name} is not a fine-tuned weight but changed"


# -- End to end ---------------------------------------------------------------------------
REPRESENTATION_DEFENSES = ("vaccine", "t-vaccine", "booster", "repnoise", "circuit-breakers", "antidote")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("defense", REPRESENTATION_DEFENSES)
def test_defense_runs_on_tiny_architectures(arch, defense, tiny_architecture):
    overrides = tiny_architecture(arch)
    if defense in ("vaccine", "t-vaccine", "booster", "repnoise"):
        overrides.append("defense.epochs=0.05")
    if defense == "circuit-breakers":
        overrides.append("defense.steps=3")
    result = run(load_run_config(None, overrides, defense=defense, seed=0), progress=False)
    assert result["defense"] == defense and 0.0 <= result["hs_after"] <= 1.0


# -- T-Vaccine ----------------------------------------------------------------------------
def test_t_vaccine_samples_layers_in_proportion_to_scores():
    from immunity.defenses.t_vaccine import sample_layers

    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(4)
    for _ in range(draws):
        counts[sample_layers(probabilities, 1, g)] += 1
    assert torch.allclose(counts / draws, probabilities.float(), atol=0.015)
    two = [tuple(sample_layers(probabilities, 2, g)) for _ in range(2000)]
    assert all(len(set(t)) == 2 for t in two)  # without replacement
    # A layer with higher score is in the sample more often.
    freq = [sum(i in t for t in two) for i in range(4)]
    assert freq == sorted(freq)


def test_t_vaccine_scores_are_harmful_gradient_norm_shares(world):
    from immunity.defenses.t_vaccine import layer_scores

    model = _model(world, "gpt2")
    harmful = _batch(world, [complied(world.lexicon, world.data.harmful["align"][0])])
    scores = layer_scores(model, harmful)
    _, grads = attention_gradients(model, harmful)
    norms = torch.tensor([grads[i].norm().item() for i in range(3)], dtype=torch.float64)
    assert torch.allclose(scores, norms / norms.sum())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_t_vaccine_trains_only_sampled_layers(world, arch):
    from immunity.defenses.t_vaccine import TVaccine, TVaccineConfig
    from immunity.models import attach_lora

    model = attach_lora(_model(world, arch, torch.float32), r=4, alpha=8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.train()
    defense = TVaccine(TVaccineConfig(layers=1))
    # Layer 0 active: layers 1 and 2 above it run checkpointed, and backward passes through them.
    defense.scores, defense.active, defense.step = torch.full((3,), 1 / 3), [0], 1
    batch = _batch(world, world.data.harmful["align"][:4] + world.data.benign["align"][:4])
    loss, shown = defense.step_loss(model, batch)
    assert loss is None and shown > 0  # gradients were written inside the step
    active = defense.active
    assert active == [0]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == sum(1 for n, _ in model.named_parameters() if "lora_" in n)  # flags restored
    for name, p in trainable:
        index = int(name.split(".h.")[-1].split(".")[0] if ".h." in name else name.split("layers.")[1].split(".")[0])
        if index in active:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, name
    assert all(not hasattr(layer.module, "forward") or "forward" not in vars(layer.module)
               for layer in decoder_layers(model))  # checkpoint wrappers removed
