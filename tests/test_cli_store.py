import json

import pytest

from immunity import cli
from immunity.bench.store import Store
from immunity.config import ConfigError, RunConfig, build_config, load_run_config


def test_list_json_names_everything(capsys):
    assert cli.main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"defenses", "attacks", "tasks", "judges", "models"}
    assert {"none", "sft"} <= set(out["defenses"])
    assert "harmful-finetune" in out["attacks"] and "safetyworld" in out["judges"]
    assert set(out["tasks"]) == {"sentiment", "topic", "arithmetic"}


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'attack.lr'"):
        load_run_config(None, ["attack.lrr=1e-3"])
    with pytest.raises(ConfigError, match="expected float"):
        load_run_config(None, ["attack.lr=fast"])
    with pytest.raises(ValueError, match="attack.mode"):
        load_run_config(None, ["attack.mode=qlora"])
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        from immunity.defenses.sft import SFTConfig
        build_config(SFTConfig, {"lrr": "1"})


def test_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nattack:\n  p: 0.05\n  schedule: cosine\ndefense_args:\n  lr: 0.002\n")
    cfg = load_run_config(str(path), ["attack.p=0.2", "world.heldout_categories=arson,forgery"])
    assert isinstance(cfg, RunConfig)
    assert cfg.seed == 3 and cfg.attack.p == 0.2 and cfg.attack.schedule == "cosine"
    assert cfg.defense_args == {"lr": 0.002}
    assert cfg.world.heldout_categories == ("arson", "forgery")


def test_run_json_round_trip(capsys, tiny):
    code = cli.main(["run", "--defense", "sft", "--seed", "1", "--json", *tiny, "attack.p=0.2",
                     "attack.schedule=cosine", "attack.task=topic", "attack.lr=1e-3"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("hs_before", "helpful_before", "hs_after", "capability_after", "fa_after"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["defense"] == "sft" and result["seed"] == 1 and result["attack"] == "harmful-finetune"
    assert result["attack_config"]["p"] == 0.2 and result["attack_config"]["task"] == "topic"
    assert result["judge"] == "safetyworld" and result["versions"]["torch"]
    assert {"base", "defend", "attack", "eval_before", "eval_after"} <= set(result["timings"])


def test_bad_input_gives_a_clear_error(capsys):
    assert cli.main(["run", "--defense", "sfft", "--json"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_bench_resumes_and_skips_stored_runs(tiny, capsys, monkeypatch):
    args = ["bench", "--defenses", "sft", "--seeds", "0", "--grid", "attack.p=0,0.1", "--store", "r.db",
            "--quiet", *tiny]
    real_run = cli.Pipeline.run
    calls = []

    def crash_on_second(self):
        calls.append(self.cfg.attack.p)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted mid-bench
        return real_run(self)

    monkeypatch.setattr(cli.Pipeline, "run", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert len(Store("r.db").results()) == 1  # the finished run was committed

    monkeypatch.setattr(cli.Pipeline, "run", lambda self: calls.append(self.cfg.attack.p) or real_run(self))
    assert cli.main(args) == 0
    assert calls[2:] == [0.1]  # only the missing run ran
    assert "1 already stored, 1 to run" in capsys.readouterr().err
    results = Store("r.db").results()
    assert sorted(r["attack_config"]["p"] for r in results) == [0.0, 0.1]
    assert len({r["config_hash"] for r in results}) == 2
    assert cli.main(["report", "--store", "r.db"]) == 0
    assert "| sft (epochs=0.1) |" in capsys.readouterr().out  # non-default settings are shown


def test_alignment_is_cached_and_reused(tiny, monkeypatch):
    import torch

    from immunity.bench.pipeline import Pipeline
    from immunity.defenses.sft import SFT

    cfg = load_run_config(None, tiny, defense="sft", seed=0)
    first = Pipeline(cfg, progress=False)
    a = first.defend(first.base_model())

    def must_not_train(self, model, context):
        raise AssertionError("alignment re-ran despite the cache")

    monkeypatch.setattr(SFT, "apply", must_not_train)
    second = Pipeline(cfg, progress=False)
    b = second.defend(second.base_model())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def _stored(defense, seed, capability, lr=3e-4):
    from dataclasses import asdict

    from immunity.attacks.harmful_finetune import HarmfulFinetuneConfig

    return {"defense": defense, "defense_config": {}, "seed": seed, "model": "safetyworld", "judge": "safetyworld",
            "split": "eval", "attack_config": asdict(HarmfulFinetuneConfig(lr=lr)), "capability_after": capability,
            "hs_after": capability}


def test_report_pairs_each_seed_with_its_from_scratch_reference():
    from immunity.bench.report import markdown_table

    results = [_stored("scratch", 0, 0.1), _stored("scratch", 1, 0.3), _stored("sft", 0, 0.5), _stored("sft", 1, 0.4),
               _stored("none", 0, 0.9, lr=1e-3)]  # another attack: no reference for it
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown_table(results).splitlines()[2:]}
    regret = -2  # the column before "defense s"
    assert rows["sft"][regret] == "25.0 ± 21.2"  # (0.5 - 0.1, 0.4 - 0.3) in %
    assert rows["scratch"][regret] == "0.0 ± 0.0"
    assert rows["none"][regret] == "–"


def test_report_filters_by_attack(tmp_path, capsys):
    store = Store(tmp_path / "r.db")
    for i, r in enumerate([_stored("sft", 0, 0.5), _stored("sft", 1, 0.4, lr=1e-3)]):
        store.put(r | {"config_hash": str(i), "attack": "harmful-finetune", "versions": {}}, {})
    cli.main(["report", "--store", str(tmp_path / "r.db"), "--attack", "lr=1e-3"])
    out = capsys.readouterr().out
    assert "lr=0.001" in out and "lr=0.0003" not in out
