"""Composed defenses (`--defense booster+lox+antidote`): parsing, stage order, caching, results."""

import pytest
import torch

from immunity.config import ConfigError, defense_chain, load_run_config, validate
from immunity.defenses.antidote import Antidote
from immunity.defenses.booster import Booster
from immunity.defenses.lox import LoX
from immunity.engine.pipeline import Pipeline, run
from immunity.engine.result import RunResult
from immunity.reports.analysis import defense_label


def _without_defense_keys(tiny):
    return [o for o in tiny if not o.startswith("defense.")]


def test_a_composition_builds_each_defense_with_its_own_keys():
    chain = defense_chain("booster+lox+antidote", {"lox.alpha": "1.25", "booster.alpha": 0.1})
    assert [s.name for s in chain] == ["booster", "lox", "antidote"]
    assert chain[1].config.alpha == 1.25 and chain[0].config.alpha == 0.1
    assert chain[2].config == Antidote.Config()


@pytest.mark.parametrize(
    "defense, args, reason",
    [
        ("lox+booster", {}, "stage order"),
        ("booster+vaccine", {}, "at most one alignment"),
        ("lox+lox", {}, "twice"),
        ("sft++lox", {}, "empty name"),
        ("booster+lox", {"alpha": 1}, "name the defense first"),
        ("booster+lox", {"lx.alpha": 1}, "name the defense first"),
    ],
)
def test_bad_compositions_are_rejected_with_a_reason(defense, args, reason):
    with pytest.raises(ConfigError, match=reason):
        defense_chain(defense, args)


def test_a_repair_in_a_composition_needs_a_fine_tuning_attack():
    cfg = load_run_config(None, ["attack=steering"], defense="booster+antidote")
    with pytest.raises(ConfigError, match="antidote repairs"):
        validate(cfg)


def test_composed_defenses_run_in_stage_order_each_on_the_last_ones_model(tiny, monkeypatch):
    overrides = _without_defense_keys(tiny) + ["defense.booster.epochs=0.1"]
    calls, received = [], {}
    for cls in (Booster, LoX, Antidote):

        def recording(self, model, context, _apply=cls.apply, _name=cls.name):
            calls.append(_name)
            received[_name] = {n: p.detach().clone() for n, p in model.named_parameters()}
            return _apply(self, model, context)

        monkeypatch.setattr(cls, "apply", recording)

    cfg = load_run_config(None, overrides, defense="booster+lox+antidote", seed=0)
    validate(cfg)
    result = run(cfg, progress=False)
    assert calls == ["booster", "lox", "antidote"]  # the repair after the attack
    assert list(result["defense_config"]) == ["booster", "lox", "antidote"]
    assert result["defense_config"]["booster"]["epochs"] == 0.1
    assert "repair" in result["timings"] and result["defense_seconds"] >= result["timings"]["repair"]

    # LoX extrapolated Booster's released model (the cached one a `booster` run releases).
    booster_alone = load_run_config(None, overrides[:-1] + ["defense.epochs=0.1"], defense="booster", seed=0)
    pipeline = Pipeline(booster_alone, progress=False)
    released = pipeline.defend(pipeline.base_model())
    assert calls == ["booster", "lox", "antidote"]  # served from the cache, not trained again
    for name, weight in released.named_parameters():
        assert torch.equal(weight, received["lox"][name]), name
    label = defense_label(RunResult.from_dict(result))
    assert "lox.alpha" not in label and "booster.epochs=0.1" in label


def test_the_default_sft_under_a_post_alignment_defense_is_implicit(tiny, monkeypatch):
    """`lox` and `sft+lox` release one cached model."""
    overrides = _without_defense_keys(tiny)
    alone = Pipeline(load_run_config(None, overrides, defense="lox", seed=0), progress=False)
    first = alone.defend(alone.base_model())
    monkeypatch.setattr(LoX, "apply", lambda *a: pytest.fail("LoX re-ran for sft+lox"))
    composed = Pipeline(load_run_config(None, overrides, defense="sft+lox", seed=0), progress=False)
    second = composed.defend(composed.base_model())
    for (n, p), (_, q) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(p, q), n


def test_run_and_defend_release_the_same_model_through_one_engine(tiny, tmp_path, monkeypatch):
    """`immunity run` and `immunity defend` apply a chain through `Pipeline.defend`: on the same
    model, data and seed, each computed from an empty cache, they release the same weights."""
    from immunity import api

    settings = _without_defense_keys(tiny) + ["defense.sft.epochs=0.1", "defense.lox.alpha=1.5"]
    cfg = load_run_config(None, settings, defense="sft+lox")
    monkeypatch.setenv("IMMUNITY_CACHE", str(tmp_path / "cache-run"))
    pipeline = Pipeline(cfg, progress=False)
    from_run = pipeline.defend(pipeline.base_model())
    monkeypatch.setenv("IMMUNITY_CACHE", str(tmp_path / "cache-defend"))
    from_defend = api.defend("safetyworld", "sft+lox", settings=settings, progress=False)
    ours, theirs = from_run.state_dict(), from_defend.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (tmp_path / "cache-defend").is_dir()  # built there, not read from the run's cache
