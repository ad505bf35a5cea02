"""The attack registry (`attack=NAME`, each attack's own typed keys) and the inference-time
attacks against independent computations: steering adds alpha x the difference in means to one
layer's output; refusal ablation's weight edit equals projecting the direction out of the
residual stream (Arditi et al. 2024: orthogonalising the weights equals ablating the direction
from every write to the stream)."""

import pytest
import torch

from immunity.attacks.refusal_ablation import RefusalAblation, RefusalAblationConfig
from immunity.attacks.steering import Steering, SteeringConfig, compliance_direction
from immunity.config import ConfigError, load_run_config, validate
from immunity.data import encode_chat, from_world, prompt_ids
from immunity.models import decoder_layers


def test_attack_name_switches_the_config_class_whatever_the_order():
    cfg = load_run_config(None, ["attack.alpha=2.5", "attack=steering", "attack.layer=1"])
    assert cfg.attack_name == "steering" and isinstance(cfg.attack, SteeringConfig)
    assert cfg.attack.alpha == 2.5 and cfg.attack.layer == 1
    assert load_run_config(None, ["attack_name=refusal-ablation"]).attack.__class__ is RefusalAblationConfig
    assert load_run_config(None, []).attack.p == 0.1  # the default attack keeps its keys


@pytest.mark.parametrize("overrides, message", [
    (["attack=steerng"], "did you mean 'steering'"),
    (["attack=steering", "attack.alpah=2"], "did you mean 'attack.alpha'"),
    (["attack=steering", "attack.p=0.1"], "unknown config key 'attack.p'"),
    (["attack=benign-finetune", "attack.p=0.1"], "benign data only"),
])
def test_bad_attack_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides)


def test_a_repair_defense_needs_a_fine_tuning_attack():
    with pytest.raises(ConfigError, match="trains nothing"):
        validate(load_run_config(None, ["attack=steering"], defense="antidote"))


def _states(model, tokenizer, prompts):
    ids = torch.tensor([prompt_ids(tokenizer, p) for p in prompts])
    return model(input_ids=ids, output_hidden_states=True)


def _layer_output(model, tokenizer, prompts, layer):
    """Layer `layer`'s output as the next layer receives it (a hook registered last sees every
    earlier hook's edit)."""
    seen = []
    handle = decoder_layers(model)[layer].module.register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=torch.tensor([prompt_ids(tokenizer, p) for p in prompts]))
    handle.remove()
    return seen[0]


def _same_length(prompts, tokenizer, k=6):
    groups = {}
    for p in prompts:
        groups.setdefault(len(prompt_ids(tokenizer, p)), []).append(p)
    return max(groups.values(), key=len)[:k]


def _prefix_state(model, tok, example, layer, tokens):
    """Layer output at the last token of the request followed by `tokens` answer tokens, alone."""
    n_prompt = len(prompt_ids(tok, example.prompt))
    ids = encode_chat(tok, example.prompt, example.answer)["input_ids"][:n_prompt + tokens]
    seen = []
    handle = decoder_layers(model)[layer].module.register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    return seen[0][0, -1]


def test_steering_adds_alpha_times_the_compliant_minus_refusing_mean(world, tiny_model):
    model, data, tok = tiny_model("llama", torch.float64, layers=3), from_world(world.data), world.tokenizer
    layer, n, tokens = 1, 16, 2
    expected = torch.stack([_prefix_state(model, tok, e, layer, tokens) for e in data.harmful["attack"][:n]]).mean(0) \
        - torch.stack([_prefix_state(model, tok, e, layer, tokens) for e in data.refusals["attack"][:n]]).mean(0)
    assert [e.prompt for e in data.harmful["attack"][:n]] == [e.prompt for e in data.refusals["attack"][:n]]
    direction = compliance_direction(model, tok, data, layer, n, tokens)  # batched, left-padded
    torch.testing.assert_close(direction, expected.float(), rtol=1e-5, atol=1e-6)

    probe = _same_length([e.prompt for e in data.benign["val"]], tok)
    before = _layer_output(model, tok, probe, layer)
    Steering(SteeringConfig(layer=layer, alpha=2.0, n=n)).run(model, tok, data, seed=0)
    after = _layer_output(model, tok, probe, layer)
    torch.testing.assert_close(after - before, (2.0 * direction).to(after.dtype).expand_as(after), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_refusal_ablation_equals_projecting_the_residual_stream(world, tiny_model, arch):
    model, data, tok = tiny_model(arch, torch.float64, layers=3), from_world(world.data), world.tokenizer
    reference = tiny_model(arch, torch.float64, layers=3)
    probe = _same_length([e.prompt for e in data.harmful["val"]], tok)
    RefusalAblation(RefusalAblationConfig(layer=1, n=16)).run(model, tok, data, seed=0)
    refusal = -compliance_direction(reference, tok, data, 1, 16, 2).double()
    unit = refusal / refusal.norm()

    def project(h):
        return h - (h @ unit).unsqueeze(-1) * unit

    layers = decoder_layers(reference)
    handles = [layers[0].module.register_forward_pre_hook(
        lambda m, args, kwargs: ((project(args[0]), *args[1:]), kwargs) if args
        else (args, {**kwargs, "hidden_states": project(kwargs["hidden_states"])}), with_kwargs=True)]
    for block in [b for layer in layers for b in (layer.attention, layer.mlp)]:  # every write to the stream
        handles.append(block.register_forward_hook(
            lambda m, a, out: (project(out[0]), *out[1:]) if isinstance(out, tuple) else project(out)))
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
    from immunity.training.interventions import LoReFT
    from immunity.data import collate, encode_chat
    from immunity.training import lm_loss

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
