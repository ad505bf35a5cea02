"""Mechanistic probes against independent computations, and `immunity probe` end to end."""

import json
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from immunity import cli
from immunity.data import IGNORE
from immunity.evaluation import probes
from immunity.world import complied


def test_lanczos_finds_the_extreme_eigenvalues_of_an_explicit_hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))

    def loss_of(weights):
        return F.cross_entropy(functional_call(model, weights, (x,)), y)

    params, hvp = probes.hessian_vector_product(model, loss_of)
    names = list(params)
    sizes = [params[n].numel() for n in names]

    def flat_loss(vector):
        chunks = torch.split(vector, sizes)
        return loss_of({n: c.view_as(params[n]) for n, c in zip(names, chunks)})

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([params[n].reshape(-1) for n in names]))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    top, bottom = probes.lanczos(hvp, params, steps=sum(sizes))
    assert math.isclose(top, eigenvalues[-1].item(), rel_tol=1e-6)
    assert math.isclose(bottom, eigenvalues[0].item(), rel_tol=1e-6, abs_tol=1e-9)


def test_shallow_alignment_kl_per_answer_position(world, tiny_model, batch_of):
    released, base = tiny_model(seed=0), tiny_model(seed=1)
    examples = [complied(world.lexicon, e) for e in world.data.harmful["val"][:3]]
    result = probes.token_kl(released, base, world.tokenizer, examples, positions=4)
    batch = batch_of(examples)
    lp = released(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    lq = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    for t in range(4):
        values = []
        for b in range(3):
            positions = [i for i in range(batch["labels"].shape[1] - 1) if batch["labels"][b, i + 1] != IGNORE]
            i = positions[t]
            values.append((lp[b, i].exp() * (lp[b, i] - lq[b, i])).sum().item())
        assert math.isclose(result["kl_per_position"][t], sum(values) / 3, rel_tol=1e-9)
    assert 1 <= result["depth"] <= 4


def test_drift_is_relative_l2_per_hidden_state(world, tiny_model):
    released, attacked = tiny_model(seed=0), tiny_model(seed=0)
    with torch.no_grad():
        attacked.transformer.h[1].mlp.c_fc.weight.mul_(1.5)  # change layer 1 only
    prompts = [e.prompt for e in world.data.harmful["val"][:2]]
    values = probes.drift(released, attacked, world.tokenizer, prompts)
    assert len(values) == 4 and values[0] == 0.0 and values[1] == 0.0 and values[2] > 0
    from immunity.data import prompt_ids

    ids = torch.tensor([prompt_ids(world.tokenizer, prompts[0])])
    a = released(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
    b = attacked(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
    single = probes.drift(released, attacked, world.tokenizer, prompts[:1])[2]
    assert math.isclose(single, ((b - a).norm(dim=-1) / a.norm(dim=-1)).mean().item(), rel_tol=1e-9)


def test_basin_direction_is_filter_normalised_and_weights_are_restored(tiny_model):
    model = tiny_model()
    direction = probes.filter_normalised_direction(model, seed=0)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert torch.equal(direction[name], torch.zeros_like(p))
        else:
            assert math.isclose(direction[name].norm().item(), p.norm().item(), rel_tol=1e-9)
    before = [p.detach().clone() for p in model.parameters()]
    alphas_seen = []
    # A synthetic HS that grows with the distance from the released weights.
    origin = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def hs_of(m):
        distance = (torch.cat([p.detach().reshape(-1) for p in m.parameters()]) - origin).norm().item()
        alphas_seen.append(distance)
        return min(1.0, distance / 50)

    result = probes.basin(model, hs_of, seed=0, points=5, extent=0.5, tolerance=0.3)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert result["alphas"] == [-0.5, -0.25, 0.0, 0.25, 0.5] and result["hs"][2] == 0.0
    inside = [a for a, h in zip(result["alphas"], result["hs"]) if h <= 0.3]
    assert math.isclose(result["width"], max(inside) - min(inside))


def test_probe_command_prints_one_json_object(tiny, capsys):
    assert (
        cli.main(
            [
                "probe",
                "--defense",
                "sft",
                "--seed",
                "0",
                "--json",
                "--quiet",
                *tiny,
                "probe.prompts=8",
                "probe.basin_points=3",
                "probe.lanczos_steps=5",
                "probe.hessian_examples=4",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert {"drift", "shallow", "hessian", "basin"} <= set(result)
    assert "kappa" in result["hessian"] and len(result["drift"]) == 3  # embeddings + 2 layers
    assert result["hessian"]["harmful"]["top"] >= result["hessian"]["harmful"]["bottom"]
