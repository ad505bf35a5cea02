"""LAPT, ILU and AntiDote's hypernetwork defense against independent computations: LAPT's noise
has each token's own mean and spread and its interpolation is the stated convex mix; ILU's
penalty equals the squared gradient with respect to a weight scale w at w = 1 (torch.func) and
its NPO term the written formula; AntiDote's patch adds exactly U V x and its DPO term prefers
the refusal. Each defense moves the weights when run."""

import pytest
import torch
from torch.func import functional_call, grad

from immunity.data import from_world
from immunity.defenses.base import DefenseContext
from immunity.models import clone_model


def _context(world, seed=0):
    return DefenseContext(world.tokenizer, from_world(world.data), seed, progress=False)


def test_lapt_noise_has_each_tokens_statistics_and_the_mix_is_convex(world, tiny_model):
    from immunity.defenses.lapt import instance_normalised_noise, interpolate

    h = 3.0 + 2.0 * torch.randn(4, 7, 64, dtype=torch.float64)
    noise = instance_normalised_noise(h)
    torch.testing.assert_close(noise.mean(-1), h.mean(-1))
    torch.testing.assert_close(noise.std(-1), h.std(-1))
    assert not torch.allclose(noise, h)
    a, b = tiny_model("llama", torch.float32, seed=0), tiny_model("llama", torch.float32, seed=1)
    expected = {n: 0.3 * p + 0.7 * dict(b.named_parameters())[n] for n, p in a.named_parameters()}
    mixed = interpolate(clone_model(a), b, 0.3)
    for n, p in mixed.named_parameters():
        torch.testing.assert_close(p, expected[n])


def test_lapt_perturbs_its_fragile_layers_and_moves_the_weights(world, tiny_model):
    from immunity.defenses.lapt import LAPT, LAPTConfig

    model = tiny_model("llama", torch.float32, layers=3)
    before = clone_model(model)
    context = _context(world)
    defended = LAPT(LAPTConfig(epochs=0.05, layers=2, scan_n=16)).apply(model, context)
    notes = context.notes
    assert len(notes["fragile_layers"]) == 2 and len(notes["fragility"]) == 3
    order = sorted(range(3), key=lambda i: -notes["fragility"][i])[:2]
    assert notes["fragile_layers"] == sorted(order)
    moved = [n for n, p in defended.named_parameters() if not torch.equal(p, dict(before.named_parameters())[n])]
    assert moved


def test_ilu_penalty_is_the_weight_scale_gradient_at_one(world, tiny_model, batch_of):
    """|| d/dw l(w . theta) at w = 1 ||^2, differentiated through a scale per weight entry."""
    from immunity.defenses.ilu import invariance_penalty

    model = tiny_model("gpt2", torch.float64, layers=2)
    batch = batch_of(world.data.benign["align"][:6])
    params = {n: p.detach() for n, p in model.named_parameters()}

    def scaled_loss(w):
        logits = functional_call(
            model,
            {n: params[n] * w[n] for n in params},
            args=(batch["input_ids"],),
            kwargs={"attention_mask": batch["attention_mask"]},
        ).logits
        from immunity.training.losses import token_ce

        return token_ce(logits, batch["labels"])

    ones = {n: torch.ones_like(p) for n, p in params.items()}
    expected = sum((g**2).sum() for g in grad(scaled_loss)(ones).values())
    got = invariance_penalty(model, batch)
    torch.testing.assert_close(got, expected)
    assert got.requires_grad  # its own gradient (the double backward) can be taken
    got.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_npo_is_the_written_formula(world, tiny_model, harmful_batch):
    from immunity.defenses.ilu import npo_loss
    from immunity.training.sequences import sequence_logprob

    model, reference = tiny_model("gpt2", torch.float64, seed=0), tiny_model("gpt2", torch.float64, seed=1)
    batch = harmful_batch(0, 5)
    beta = 0.1
    with torch.no_grad():
        ratio = torch.exp(sequence_logprob(model, batch) - sequence_logprob(reference, batch))
        expected = (2 / beta) * torch.log1p(ratio**beta).mean()
        torch.testing.assert_close(npo_loss(model, reference, batch, beta), expected)
    # sequence_logprob sums the answer tokens' log-probabilities (independent: per token), the
    # convention of AntiDote's reference DPO (respailab/Antidote loss.py, DPOLoss.get_batch_logps:
    # labels shifted by one, -100 masked, summed, not averaged)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    row = 0
    labels = batch["labels"][row]
    manual = sum(float(logits.detach()[row, t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100)
    assert abs(float(sequence_logprob(model, batch)[row].detach()) - manual) < 1e-9


def test_ilu_moves_the_weights_and_records_its_penalty(world, tiny_model):
    from immunity.defenses.ilu import ILU, ILUConfig

    model = tiny_model("llama", torch.float32, layers=2)
    before = clone_model(model)
    context = _context(world)
    defended = ILU(ILUConfig(epochs=0.02, batch_size=8)).apply(model, context)
    assert context.notes["environments"] == 3
    assert context.notes["last_penalty"] > 0
    assert any(not torch.equal(p, dict(before.named_parameters())[n]) for n, p in defended.named_parameters())


def test_antidote_patch_adds_u_v_x_and_dpo_prefers_the_refusal(world, tiny_model, batch_of):
    from immunity.defenses.antidote_hypernet import Patcher, dpo_loss
    from immunity.models.layers import linear_modules

    model = tiny_model("llama", torch.float64, layers=2)
    targets = linear_modules(model, "attention")
    name = next(iter(targets))
    module = targets[name]
    patcher = Patcher(targets)
    x = torch.randn(3, module.weight.shape[1], dtype=torch.float64)
    u = torch.randn(module.weight.shape[0], 2, dtype=torch.float64)
    v = torch.randn(2, module.weight.shape[1], dtype=torch.float64)
    with patcher.patched({name: (u, v)}):
        got = module(x)
    torch.testing.assert_close(got, x @ module.weight.T + (x @ v.T) @ u.T)
    torch.testing.assert_close(module(x), x @ module.weight.T)  # outside the block: unpatched
    means = patcher.read_means(model, batch_of(world.data.benign["align"][:2]))
    assert set(means) == set(targets)
    patcher.remove()

    data = from_world(world.data)
    refusal = data.refusals["align"][:4]
    compliant = {e.prompt: e for e in data.harmful["align"]}
    chosen = batch_of(refusal)
    rejected = batch_of([compliant[e.prompt] for e in refusal])
    reference = clone_model(model)
    loss = dpo_loss(model, reference, chosen, rejected, 0.1, patcher, {})
    torch.testing.assert_close(loss, torch.tensor(0.6931471805599453, dtype=torch.float64))  # log 2 at the start
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-2 * p.grad
    from immunity.training.sequences import sequence_logprob

    with torch.no_grad():
        margin = (sequence_logprob(model, chosen) - sequence_logprob(model, rejected)).mean()
        start = (sequence_logprob(reference, chosen) - sequence_logprob(reference, rejected)).mean()
    assert margin > start  # a descent step makes the refusal likelier relative to compliance


def test_antidote_hypernet_trains_its_adversary_and_moves_the_weights(world, tiny_model):
    from immunity.defenses.antidote_hypernet import AntidoteHypernet, AntidoteHypernetConfig

    model = tiny_model("llama", torch.float32, layers=2)
    before = clone_model(model)
    context = _context(world)
    defended = AntidoteHypernet(AntidoteHypernetConfig(epochs=0.05, batch_size=8)).apply(model, context)
    assert context.notes["patched_maps"] == 8  # q, k, v, o in two layers
    assert any(not torch.equal(p, dict(before.named_parameters())[n]) for n, p in defended.named_parameters())
    assert not any("lora" in n for n, _ in defended.named_parameters())  # the adapter was merged


@pytest.mark.parametrize("defense", ["lapt", "ilu", "antidote-hypernet"])
def test_the_new_defenses_run_through_the_cli_config(defense):
    from immunity.config import load_run_config

    cfg = load_run_config(None, [], defense=defense)
    assert cfg.defense == defense
