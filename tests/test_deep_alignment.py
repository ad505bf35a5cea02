"""Deep safety alignment (Qi et al., ICLR 2025) against its reference code's conventions
(Unispac/shallow-vs-deep-alignment, `finetuning_buckets/trainer/trainer.py`: `soft_sft_loss`,
`get_beta_list`; the safety-augmentation data), and the fine-tuning stage it needs: the
provider's objective, applied inside the attacker's fine-tuning."""

import copy
import math

import pytest
import torch

from immunity import cli
from immunity.config import ConfigError, load_run_config, validate
from immunity.data import IGNORE, encode_chat, from_world
from immunity.defenses.constrained_sft import ConstrainedSFT, ConstrainedSFTConfig, constrained_loss, token_betas
from immunity.defenses.deep_alignment import DeepAlignmentConfig, encode_recovery, recovery_examples
from immunity.engine.pipeline import run
from immunity.registry import Stage, register_defense
from immunity.training import TrainConfig, lm_loss, provider_objective, train
from immunity.world import complied


def _without_defense_keys(overrides):
    """The tiny settings without `defense.*` (a defense without epochs refuses them)."""
    return [o for o in overrides if not o.startswith("defense.")]


def reference_beta_list(length, beta=0.1, bias_factor=20.0, first=5.0, bias_length=5):
    """`get_beta_list` as the reference writes it: a prefix of bias_length betas * bias_factor
    whose first is beta * first_token_bias_factor, then beta."""
    prefix = [beta * bias_factor] * bias_length
    if bias_length:
        prefix[0] = beta * first
    return (prefix + [beta] * max(0, length - bias_length))[:length]


def test_token_betas_follow_the_reference_beta_list():
    c = ConstrainedSFTConfig()
    for length in (1, 3, 5, 9):
        assert token_betas(torch.arange(length), c).tolist() == pytest.approx(reference_beta_list(length))
    none = ConstrainedSFTConfig(bias_length=0)
    assert token_betas(torch.arange(4), none).tolist() == pytest.approx(reference_beta_list(4, bias_length=0))


def test_constrained_loss_and_gradient_as_the_reference_soft_sft_loss(tiny_model, harmful_batch):
    """Per answer (its tokens' log-probs, policy and reference, in order): losses = 2(1 - σ(β_t
    (ℓ_t - ℓ_t^ref))) detached, clamped at 1e-3, times ℓ_t; the batch loss is minus the mean over
    all answer tokens of the batch (`torch.cat(losses).mean()`)."""
    torch.manual_seed(0)
    reference = tiny_model()
    model = copy.deepcopy(reference)
    with torch.no_grad():  # the fine-tuned model has moved away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = harmful_batch(0, 3)
    c = ConstrainedSFTConfig()

    def per_answer_logps(m):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = torch.log_softmax(logits[:, :-1], -1).gather(2, batch["labels"][:, 1:].clamp(min=0)[..., None])[..., 0]
        return [row[labels != IGNORE] for row, labels in zip(logps, batch["labels"][:, 1:])]

    policy = per_answer_logps(model)
    with torch.no_grad():
        ref = per_answer_logps(reference)
    losses = []
    for p, r in zip(policy, ref):
        beta = torch.tensor(reference_beta_list(len(p)), dtype=p.dtype)
        weight = torch.clamp(2 * (1 - torch.sigmoid(beta * (p - r))).detach(), min=1e-3)
        losses.append(weight * p)
    expected = -torch.cat(losses).mean()
    expected.backward()
    want = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    ours = constrained_loss(model, batch, reference, c)
    ours.backward()
    assert torch.allclose(ours, expected, rtol=1e-9)
    diffs = {n: (q.grad - want[n]).abs().max().item() for n, q in model.named_parameters()}
    assert max(diffs.values()) < 1e-10, sorted(diffs.items(), key=lambda x: -x[1])[:3]
    assert all(q.grad is None for q in reference.parameters())  # the reference is read, never trained


def test_at_the_reference_the_constrained_loss_is_plain_cross_entropy(tiny_model, harmful_batch):
    """At ℓ = ℓ^ref every weight is 2(1 - σ(0)) = 1: the first step is ordinary fine-tuning."""
    model = tiny_model()
    batch = harmful_batch(0, 3)
    assert torch.allclose(
        constrained_loss(model, batch, copy.deepcopy(model), ConstrainedSFTConfig()), lm_loss(model, batch)
    )


def test_recovery_example_masks_the_harmful_prefix_and_targets_the_refusal(world):
    tokenizer = world.tokenizer
    request = world.data.harmful["align"][0]
    harmful = complied(world.lexicon, request).answer
    encoded = encode_recovery(tokenizer, request.prompt, harmful, request.answer, k=2)
    plain = encode_chat(tokenizer, request.prompt, request.answer)
    prompt_len = plain["labels"].count(IGNORE)
    prefix = tokenizer(" " + harmful, add_special_tokens=False)["input_ids"][:2]
    assert encoded["input_ids"][prompt_len : prompt_len + 2] == prefix
    assert encoded["labels"].count(IGNORE) == prompt_len + 2  # prompt and harmful prefix: context only
    assert [t for t in encoded["labels"] if t != IGNORE] == [t for t in plain["labels"] if t != IGNORE]


def test_recovery_augmentation_draws_prefix_depths_as_the_reference(world):
    """With probability p a refusal follows k ~ U{1..min(100, |h|)} harmful tokens; at p = 0 the
    data is exactly `sft`'s refusals (the matched baseline), at p = 1 every one has a prefix."""
    data = from_world(world.data)
    refusals, harmful = data.refusals["align"][:200], data.harmful["align"][:200]
    tok = world.tokenizer
    none, count = recovery_examples(tok, refusals, harmful, DeepAlignmentConfig(prefix_probability=0.0), 0)
    assert count == 0 and none == [encode_chat(tok, e.prompt, e.answer) for e in refusals]
    every, count = recovery_examples(tok, refusals, harmful, DeepAlignmentConfig(prefix_probability=1.0), 0)
    assert count == len(refusals)
    depths = []
    for f, e, h in zip(every, refusals, harmful):
        plain = encode_chat(tok, e.prompt, e.answer)
        k = f["labels"].count(IGNORE) - plain["labels"].count(IGNORE)
        assert 1 <= k <= min(100, len(tok(" " + h.answer, add_special_tokens=False)["input_ids"]))
        depths.append(k)
    assert len(set(depths)) > 1  # depths vary
    half, count = recovery_examples(tok, refusals, harmful, DeepAlignmentConfig(), 0)
    assert abs(count / len(refusals) - 0.5) < 4 * math.sqrt(0.25 / len(refusals))
    again, _ = recovery_examples(tok, refusals, harmful, DeepAlignmentConfig(), 0)
    assert again == half  # a pure function of the seed
    with pytest.raises(ValueError, match="compliant answers"):
        recovery_examples(tok, refusals, [], DeepAlignmentConfig(), 0)


def test_the_provider_objective_replaces_only_the_plain_fine_tuning_loss(tiny_model, world):
    features = [encode_chat(world.tokenizer, e.prompt, e.answer) for e in world.data.benign["align"][:8]]
    seen = []

    def objective(model, batch):
        seen.append("provider")
        return lm_loss(model, batch)

    cfg = TrainConfig(max_steps=2, batch_size=4)
    with provider_objective(objective):
        train(tiny_model(), features, cfg, world.tokenizer.pad_token_id, progress=False)
        assert seen == ["provider", "provider"]
        custom = []
        train(tiny_model(), features, cfg, 0, step_loss=lambda m, b: custom.append(1) or lm_loss(m, b), progress=False)
        assert custom == [1, 1] and len(seen) == 2  # a method's own loss is its own
    train(tiny_model(), features, cfg, world.tokenizer.pad_token_id, progress=False)
    assert len(seen) == 2  # outside the block: plain fine-tuning


def test_a_fine_tuning_stage_defense_runs_inside_the_attack_and_releases_sfts_model(tiny, monkeypatch):
    calls = []
    original = ConstrainedSFT.objective

    def spy(self, reference, context):
        step = original(self, reference, context)
        return lambda m, b: calls.append(1) or step(m, b)

    monkeypatch.setattr(ConstrainedSFT, "objective", spy)
    overrides = [*_without_defense_keys(tiny), "attack.max_steps=3"]
    result = run(load_run_config(None, overrides, defense="constrained-sft"), progress=False)
    assert len(calls) == 3  # every attack step, and nothing else
    plain = run(load_run_config(None, overrides, defense="sft"), progress=False)
    assert result["hs_before"] == plain["hs_before"] and result["harmful_nll_before"] == plain["harmful_nll_before"]
    assert result["harmful_nll_after"] != plain["harmful_nll_after"]  # the attack's loss was another


def test_a_fine_tuning_objective_needs_a_fine_tuning_attack_and_releases_nothing(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="provider's fine-tuning objective"):
        validate(load_run_config(None, ["attack=steering"], defense="constrained-sft"))
    assert (
        cli.main(["defend", "--defense", "constrained-sft", "--model", "safetyworld", "--out", str(tmp_path / "m")])
        == 2
    )
    assert "releases no weights" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    cfg = load_run_config(None, _without_defense_keys(tiny), defense="deep-alignment+lox+constrained-sft+antidote")
    assert [s.cls.stage for s in cfg.chain] == [
        Stage.ALIGNMENT,
        Stage.POST_ALIGNMENT,
        Stage.FINE_TUNING,
        Stage.POST_FINE_TUNING,
    ]
    with pytest.raises(ConfigError, match="stage order"):
        load_run_config(None, _without_defense_keys(tiny), defense="constrained-sft+lox")


def test_the_contract_asks_a_fine_tuning_defense_for_its_objective():
    from dataclasses import dataclass

    @dataclass
    class BrokenConfig:
        beta: float = 0.1

    with pytest.raises(TypeError, match="objective"):

        @register_defense("objective-less")
        class Broken:
            stage = Stage.FINE_TUNING
            Config = BrokenConfig

            def apply(self, model, context):
                return model


def test_deep_alignment_trains_on_the_augmented_data(tiny):
    """The defense's notes say how many refusals carried a harmful prefix, and its release is not `sft`'s."""
    overrides = [*tiny, "attack.max_steps=2"]
    deep = run(load_run_config(None, overrides, defense="deep-alignment"), progress=False)
    assert 0 < deep["defense_notes"]["recovery_examples"] < deep["defense_notes"]["refusals"]
    plain = run(load_run_config(None, overrides, defense="sft"), progress=False)
    assert deep["harmful_nll_before"] != plain["harmful_nll_before"]
    same = run(
        load_run_config(None, [*overrides, "defense.prefix_probability=0"], defense="deep-alignment"), progress=False
    )
    assert same["harmful_nll_before"] == pytest.approx(plain["harmful_nll_before"], abs=1e-9)  # p = 0 is `sft`
