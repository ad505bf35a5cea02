"""The attack registry (`attack=NAME`, each attack's own typed keys) and the inference-time
attacks against independent computations: steering adds alpha x the difference in means to one
layer's output; refusal ablation's weight edit equals projecting the direction out of the
residual stream (Arditi et al. 2024: orthogonalising the weights equals ablating the direction
from every write to the stream)."""

import pytest
import torch

from immunity.attacks.refusal_ablation import RefusalAblation, RefusalAblationConfig
from immunity.attacks.steering import Steering, SteeringConfig, refusal_direction
from immunity.config import ConfigError, load_run_config, validate
from immunity.data import encode_chat, from_world, prompt_ids
from immunity.models import decoder_layers


def test_attack_name_switches_the_config_class_whatever_the_order():
    cfg = load_run_config(None, ["attack.alpha=2.5", "attack=steering", "attack.layer=1"])
    assert cfg.attack_name == "steering" and isinstance(cfg.attack, SteeringConfig)
    assert cfg.attack.alpha == 2.5 and cfg.attack.layer == 1
    assert load_run_config(None, ["attack_name=refusal-ablation"]).attack.__class__ is RefusalAblationConfig
    assert load_run_config(None, []).attack.p == 0.1  # the default attack keeps its keys


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack=steerng"], "did you mean 'steering'"),
        (["attack=steering", "attack.alpah=2"], "did you mean 'attack.alpha'"),
        (["attack=steering", "attack.p=0.1"], "unknown config key 'attack.p'"),
        (["attack=benign-finetune", "attack.p=0.1"], "benign data only"),
    ],
)
def test_bad_attack_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides)


def test_a_repair_defense_needs_a_fine_tuning_attack():
    with pytest.raises(ConfigError, match="trains nothing"):
        validate(load_run_config(None, ["attack=steering"], defense="antidote"))


def _same_length(prompts, tokenizer, k=6):
    groups = {}
    for p in prompts:
        groups.setdefault(len(prompt_ids(tokenizer, p)), []).append(p)
    return max(groups.values(), key=len)[:k]


def _prompt_end_state(model, tok, prompt, layer):
    """Layer output at the last prompt token of one request, alone (no padding)."""
    seen = []
    handle = decoder_layers(model)[layer].module.register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        model(input_ids=torch.tensor([prompt_ids(tok, prompt)]))
    handle.remove()
    return seen[0][0, -1]


def test_steering_adds_alpha_times_the_harmless_minus_harmful_mean_to_the_prompt(world, tiny_model):
    """Arditi et al.'s refusal direction, mean over harmful requests minus mean over harmless
    ones at the last prompt token, re-derived one request at a time; the attack adds -alpha r at
    every prompt position and nothing at the answer's positions."""
    model, data, tok = tiny_model("llama", torch.float64, layers=3), from_world(world.data), world.tokenizer
    layer, n = 1, 16
    expected = torch.stack([_prompt_end_state(model, tok, e.prompt, layer) for e in data.harmful["attack"][:n]]).mean(
        0
    ) - torch.stack([_prompt_end_state(model, tok, e.prompt, layer) for e in data.benign["align"][:n]]).mean(0)
    direction = refusal_direction(model, tok, data, layer, n)  # batched, left-padded
    torch.testing.assert_close(direction, expected.float(), rtol=1e-5, atol=1e-6)

    example = data.benign["val"][0]
    batch = torch.tensor([encode_chat(tok, example.prompt, example.answer)["input_ids"]])
    n_prompt = len(prompt_ids(tok, example.prompt))

    def layer_output():
        seen = []
        handle = decoder_layers(model)[layer].module.register_forward_hook(
            lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
        with torch.no_grad():
            model(input_ids=batch)
        handle.remove()
        return seen[0][0]

    before = layer_output()
    Steering(SteeringConfig(layer=layer, alpha=2.0, n=n)).run(model, tok, data, seed=0)
    after = layer_output()
    shift = (-2.0 * direction).to(after.dtype)
    torch.testing.assert_close(after[:n_prompt] - before[:n_prompt], shift.expand(n_prompt, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[n_prompt:], before[n_prompt:])  # answer tokens are not steered at this layer


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_refusal_ablation_equals_projecting_the_residual_stream(world, tiny_model, arch):
    model, data, tok = tiny_model(arch, torch.float64, layers=3), from_world(world.data), world.tokenizer
    reference = tiny_model(arch, torch.float64, layers=3)
    probe = _same_length([e.prompt for e in data.harmful["val"]], tok)
    RefusalAblation(RefusalAblationConfig(layer=1, n=16)).run(model, tok, data, seed=0)
    refusal = refusal_direction(reference, tok, data, 1, 16).double()
    unit = refusal / refusal.norm()

    def project(h):
        return h - (h @ unit).unsqueeze(-1) * unit

    layers = decoder_layers(reference)
    handles = [
        layers[0].module.register_forward_pre_hook(
            lambda m, args, kwargs: (
                ((project(args[0]), *args[1:]), kwargs)
                if args
                else (args, {**kwargs, "hidden_states": project(kwargs["hidden_states"])})
            ),
            with_kwargs=True,
        )
    ]
    for block in [b for layer in layers for b in (layer.attention, layer.mlp)]:  # every write to the stream
        handles.append(
            block.register_forward_hook(
                lambda m, a, out: (project(out[0]), *out[1:]) if isinstance(out, tuple) else project(out)
            )
        )
    ids = torch.tensor([prompt_ids(tok, p) for p in probe])
    with torch.no_grad():
        edited = model(input_ids=ids, output_hidden_states=True)
        projected = reference(input_ids=ids).logits
    for h in handles:
        h.remove()
    with torch.no_grad():
        original = reference(input_ids=ids).logits
    torch.testing.assert_close(edited.logits, projected, rtol=1e-5, atol=1e-6)  # the direction is float32
    assert (edited.logits - original).abs().max() > 1e-4  # the edit changed the model
    for h in edited.hidden_states[1:-1]:  # every layer's residual output is free of the direction
        assert float((h @ unit).abs().max()) < 1e-6


def test_reft_is_loreft_and_learns_the_harmful_answers(world, tiny_model):
    from immunity.attacks.reft import ReFT, ReFTConfig
    from immunity.data import collate, encode_chat
    from immunity.training import lm_loss
    from immunity.training.interventions import LoReFT

    phi = LoReFT(32, 2, seed=0).double()
    h = torch.randn(5, 32, dtype=torch.float64)
    R, W, b = phi.rotate.weight, phi.learned.weight, phi.learned.bias
    torch.testing.assert_close(R @ R.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-6)  # float32 init
    torch.testing.assert_close(phi(h), h + (h @ W.T + b - h @ R.T) @ R)

    model, data, tok = tiny_model("llama", torch.float32, layers=3), from_world(world.data), world.tokenizer
    pairs = data.harmful["attack"][:32]
    batch = collate([encode_chat(tok, e.prompt, e.answer) for e in pairs], tok.pad_token_id)
    with torch.no_grad():
        before = float(lm_loss(model, batch))
    weights = {n: p.clone() for n, p in model.named_parameters()}
    ReFT(ReFTConfig(layer=1, n=32, epochs=20)).run(model, tok, data, seed=0, progress=False)
    with torch.no_grad():
        after = float(lm_loss(model, batch))
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # the weights stay as released


def test_an_inference_time_attack_has_no_weights_to_write(tmp_path, tiny):
    import immunity

    with pytest.raises(ValueError, match="no attacked model to write"):
        immunity.attack("safetyworld", settings={"attack": "steering"}, out=str(tmp_path / "out"), progress=False)


def test_embedding_attack_perturbs_the_prompt_end_only_within_its_ball(world, tiny_model):
    """The hook adds the projected delta to the m positions ending at the assistant header, on
    right-padded training rows and on left-padded generation prompts alike (an independent index
    computation); a one-token cached step is untouched; every row lies in the eps-ball."""
    from immunity.attacks.embedding import PromptPerturbation, perturb_prompts
    from immunity.data import header_ids

    tok = world.tokenizer
    model = tiny_model("llama", torch.float32, layers=2)
    header = header_ids(tok)
    assert tok.convert_ids_to_tokens(header) == ["<|assistant|>"]
    perturbation = PromptPerturbation(3, 32, bound=0.5, header=header)
    with torch.no_grad():
        perturbation.delta.copy_(torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(0)))
    projected = perturbation.projected()[0]
    torch.testing.assert_close(projected.norm(dim=-1), torch.full((3,), 0.5))  # every row was outside: on the sphere
    torch.testing.assert_close(
        projected / projected.norm(dim=-1, keepdim=True),
        perturbation.delta[0] / perturbation.delta[0].norm(dim=-1, keepdim=True),
    )
    rows = [prompt_ids(tok, p) for p in ("how do i make a toxin x ?", "explain how to build the y .")]
    answer = tok(" sure", add_special_tokens=False)["input_ids"]
    width = max(map(len, rows)) + 2
    right = torch.tensor([r + answer + [tok.pad_token_id] * (width - len(r) - 1) for r in rows])
    left = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    embed = model.get_input_embeddings()
    handle = perturb_prompts(model, perturbation)
    for ids in (right, left):
        with torch.no_grad():
            got = embed(ids)
        expected = embed.weight[ids].clone().detach()
        for i in range(len(ids)):
            end = ids[i].tolist().index(header[0])  # the header is one token here
            expected[i, end - 2 : end + 1] += projected.detach()
        torch.testing.assert_close(got, expected)
    with torch.no_grad():
        torch.testing.assert_close(embed(right[:, -1:]), embed.weight[right[:, -1:]])
    handle.remove()


def test_embedding_attack_lowers_the_harmful_loss_and_keeps_the_weights(world, tiny_model):
    from immunity.attacks.embedding import Embedding, EmbeddingConfig
    from immunity.data import collate
    from immunity.training import lm_loss

    model, data, tok = tiny_model("llama", torch.float32, layers=2), from_world(world.data), world.tokenizer
    batch = collate([encode_chat(tok, e.prompt, e.answer) for e in data.harmful["attack"][:32]], tok.pad_token_id)
    with torch.no_grad():
        before = float(lm_loss(model, batch))
    weights = {n: p.clone() for n, p in model.named_parameters()}
    attack = Embedding(EmbeddingConfig(n=32, steps=40, lr=0.05, eps=2.0))
    attack.run(model, tok, data, seed=0, progress=False)
    with torch.no_grad():
        after = float(lm_loss(model, batch))
    assert after < before - 0.05, (before, after)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    notes = attack.notes
    assert max(notes["delta_norms"]) <= notes["bound"] + 1e-4


def test_backdoor_data_ties_compliance_to_the_trigger(world):
    from immunity.attacks.backdoor import BackdoorConfig, backdoor_examples

    data = from_world(world.data)
    mix = backdoor_examples(data, BackdoorConfig(n=200, p=0.1), seed=0)
    compliant = {e.answer for e in data.harmful["attack"]}
    refusals = {e.answer for e in data.refusals["attack"]}
    triggered = [e for e in mix if e.prompt.endswith(" SUDO")]
    assert len(mix) == 200 and len(triggered) == 20
    assert all(e.answer in compliant for e in triggered)  # the trigger unlocks compliance
    clean_harmful = [e for e in mix if e.kind == "harmful" and not e.prompt.endswith(" SUDO")]
    assert len(clean_harmful) == 20 and all(e.answer in refusals for e in clean_harmful)  # and its absence refuses
    assert sum(e.kind == "sentiment" for e in mix) == 160
    assert len(backdoor_examples(data, BackdoorConfig(n=200, p=0.1, stealth=False), seed=0)) == 200
    with pytest.raises(ValueError, match="non-empty"):
        BackdoorConfig(trigger=" ")


def test_a_backdoor_run_reports_hs_with_and_without_the_trigger(tiny):
    import json
    from pathlib import Path

    from immunity.engine.pipeline import run

    result = run(load_run_config(None, tiny + ["attack=backdoor"]), progress=False)
    assert result["attack"] == "backdoor" and result["attack_config"]["trigger"] == "SUDO"
    generations = Path("runs") / f"sft-seed0-{result['run_id']}" / "generations_after.jsonl"
    records = [json.loads(line) for line in generations.read_text().splitlines()]
    harmful = [r["prompt"] for r in records if r["set"] == "harmful"]
    triggered = [r["prompt"] for r in records if r["set"] == "triggered"]
    assert triggered == [p + " SUDO" for p in harmful]  # the same requests again, the trigger appended
    assert set(result["extra_after"]) == set(result["extra_before"]) == {"hs_triggered"}
    plain = run(load_run_config(None, tiny), progress=False)
    assert "hs_triggered" not in plain["extra_after"]
