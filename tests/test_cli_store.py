"""The CLI, configuration, results store and report (in process; real-process cases live in
test_reliability.py)."""

import json
import sqlite3
from dataclasses import asdict

import pytest

from immunity import cli
from immunity.attacks.harmful_finetune import HarmfulFinetuneConfig
from immunity.bench.pipeline import config_hash, run_key
from immunity.bench.report import markdown_table, regret_table
from immunity.bench.store import Store
from immunity.config import ConfigError, RunConfig, build_config, load_run_config
from immunity.defenses.sft import SFTConfig


def test_list_json_names_everything(capsys):
    assert cli.main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"defenses", "attacks", "tasks", "judges", "models"}
    assert {"none", "sft", "booster", "antidote"} <= set(out["defenses"])
    assert "harmful-finetune" in out["attacks"] and "safetyworld" in out["judges"]
    assert set(out["tasks"]) == {"sentiment", "topic", "arithmetic"}


def test_unknown_keys_and_bad_values_are_rejected_with_a_reason():
    with pytest.raises(ConfigError, match="did you mean 'attack.lr'"):
        load_run_config(None, ["attack.lrr=1e-3"])
    with pytest.raises(ConfigError, match="expected float"):
        load_run_config(None, ["attack.lr=fast"])
    with pytest.raises(ConfigError, match="attack.mode"):
        load_run_config(None, ["attack.mode=qlora"])
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        build_config(SFTConfig, {"lrr": "1"})
    with pytest.raises(ConfigError, match="must be positive"):
        load_run_config(None, ["attack.n=-5"])
    with pytest.raises(ConfigError, match="must be positive"):
        load_run_config(None, ["attack.lr=0"])
    with pytest.raises(ConfigError, match="budget must be positive"):
        load_run_config(None, ["attack.epochs=0"])
    with pytest.raises(ConfigError, match="finite"):
        load_run_config(None, ["attack.lr=nan"])
    with pytest.raises(ConfigError, match="expected int"):
        load_run_config(None, ["attack.n=2.5"])


def test_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nattack:\n  p: 0.05\n  schedule: cosine\ndefense_args:\n  lr: 0.002\n")
    cfg = load_run_config(str(path), ["attack.p=0.2", "world.heldout_categories=arson,forgery"])
    assert isinstance(cfg, RunConfig)
    assert cfg.seed == 3 and cfg.attack.p == 0.2 and cfg.attack.schedule == "cosine"
    assert cfg.defense_args == {"lr": 0.002}
    assert cfg.world.heldout_categories == ("arson", "forgery")


def test_equal_values_written_differently_are_one_run(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("defense: vaccine\ndefense_args:\n  rho: 5\n")
    hashes = {config_hash(load_run_config(None, ["defense.rho=5"], defense="vaccine")),
              config_hash(load_run_config(None, ["defense.rho=5.0"], defense="vaccine")),
              config_hash(load_run_config(str(yaml_file)))}
    assert len(hashes) == 1
    assert config_hash(load_run_config(None, ["defense.rho=5.5"], defense="vaccine")) not in hashes
    # out_dir decides where generations go, not what the run computes
    assert config_hash(load_run_config(None, ["out_dir=elsewhere"])) == config_hash(load_run_config(None, []))


def test_run_json_round_trip_with_overrides_anywhere(capsys, tiny):
    code = cli.main(["run", "attack.p=0.2", "--defense", "sft", *tiny, "--seed", "1", "--json", "--quiet",
                     "attack.schedule=cosine", "attack.task=topic", "attack.lr=1e-3"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["defense"] == "sft" and result["seed"] == 1 and result["attack"] == "harmful-finetune"
    assert result["attack_config"]["p"] == 0.2 and result["attack_config"]["task"] == "topic"
    assert result["attack_config"]["schedule"] == "cosine" and result["attack_config"]["lr"] == 1e-3
    assert result["judge"] == "safetyworld" and result["versions"]["torch"]
    assert {"base", "defend", "attack", "eval_before", "eval_after"} <= set(result["timings"])
    assert result["harmful_nll_before"] > 0 and result["harmful_nll_after"] > 0
    assert len(result["code_version"]) == 12 and len(result["run_id"]) == 16


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
    assert len({r["run_id"] for r in results}) == 2
    assert cli.main(["report", "--store", "r.db"]) == 0
    assert "| sft (epochs=0.1) |" in capsys.readouterr().out  # non-default settings are shown


def test_bench_plan_computes_duplicates_once(tiny, capsys, monkeypatch):
    calls = []
    real_run = cli.Pipeline.run
    monkeypatch.setattr(cli.Pipeline, "run", lambda self: calls.append(1) or real_run(self))
    assert cli.main(["bench", "--defenses", "sft,sft", "--seeds", "0,0", "--grid", "attack.p=0.1,0.10",
                     "--store", "r.db", "--quiet", *tiny]) == 0
    assert len(calls) == 1 and "bench: 1 runs" in capsys.readouterr().err


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


def _stored(defense, seed, capability, lr=3e-4, n=500, nll=1.0):
    return {"defense": defense, "defense_config": {}, "seed": seed, "model": "safetyworld", "judge": "safetyworld",
            "split": "eval", "attack_config": asdict(HarmfulFinetuneConfig(lr=lr, n=n)), "capability_after": capability,
            "hs_after": capability, "harmful_nll_after": nll}


def test_report_pairs_each_seed_with_its_from_scratch_reference():
    results = [_stored("scratch", 0, 0.1), _stored("scratch", 1, 0.3), _stored("sft", 0, 0.5), _stored("sft", 1, 0.4),
               _stored("none", 0, 0.9, lr=1e-3)]  # another attack: no reference for it
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown_table(results).splitlines()[2:]}
    over_scratch = -2  # the column before "defense s"
    assert rows["sft"][over_scratch] == "25.0 ± 21.2"  # (0.5 - 0.1, 0.4 - 0.3) in %
    assert rows["scratch"][over_scratch] == "0.0 ± 0.0"
    assert rows["none"][over_scratch] == "–"


def test_regret_is_scratch_nll_minus_released_nll_per_seed_and_n():
    results = [_stored("scratch", s, 0, n=n, nll=nll) for s, n, nll in ((0, 16, 5.0), (1, 16, 6.0), (0, 64, 3.0))]
    results += [_stored("sft", 0, 0, n=16, nll=1.0), _stored("sft", 1, 0, n=16, nll=2.0), _stored("sft", 0, 0, n=64, nll=4.0)]
    lines = regret_table(results).splitlines()
    assert lines[0] == "| defense | seeds | n = 16 | n = 64 |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[2:]}
    assert rows["scratch"][2:] == ["NLL 5.50 ± 0.71", "NLL 3.00 ± 0.00 |"]
    assert rows["sft"][2:] == ["4.00 ± 0.00", "-1.00 ± 0.00 |"]  # (5-1, 6-2); 3-4


def test_report_filters_by_attack(tmp_path, capsys):
    store = Store(tmp_path / "r.db")
    for i, r in enumerate([_stored("sft", 0, 0.5), _stored("sft", 1, 0.4, lr=1e-3)]):
        store.put(r | {"run_id": str(i), "config_hash": str(i), "code_version": "x", "attack": "harmful-finetune",
                       "versions": {}}, {})
    cli.main(["report", "--store", str(tmp_path / "r.db"), "--attack", "lr=1e-3", "--include-stale"])
    out = capsys.readouterr()
    assert "lr=0.001" in out.out and "lr=0.0003" not in out.out
    assert "2 rows were made by code that has changed" in out.err and "(stale)" in out.out


def test_the_by_attack_table_has_one_column_per_attack_and_filters_name_attacks(tmp_path, capsys):
    from immunity.attacks.steering import SteeringConfig
    from immunity.bench.report import by_attack_table

    steering = {"attack": "steering", "attack_config": asdict(SteeringConfig(alpha=0.5))}
    results = [_stored("sft", 0, 0.5) | {"helpful_after": 1.0}, _stored("sft", 1, 0.7) | {"helpful_after": 0.9},
               _stored("sft", 0, 0.1) | steering | {"helpful_after": 0.8}]
    lines = by_attack_table(results).splitlines()
    assert lines[0].count("|") == 5 and "steering sentiment layer=-1 alpha=0.5" in lines[0]
    assert lines[2].startswith("| sft | 0,1 | ") and "60.0 ± 14.1 (95 ± 7)" in lines[2] and "10.0 ± 0.0 (80 ± 0)" in lines[2]
    store = Store(tmp_path / "a.db")
    for i, r in enumerate(results):
        store.put(r | {"run_id": str(i), "config_hash": str(i), "code_version": "x", "versions": {},
                       "attack": r.get("attack", "harmful-finetune")}, {})
    cli.main(["report", "--store", str(tmp_path / "a.db"), "--include-stale", "--attack", "attack=steering",
              "alpha=0.5"])
    out = capsys.readouterr().out
    assert "steering" in out and "p=0.1" not in out


def test_version_one_store_is_migrated_and_its_rows_read_as_stale(tmp_path, capsys):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (config_hash TEXT PRIMARY KEY, created TEXT NOT NULL, defense TEXT NOT NULL, "
                 "attack TEXT NOT NULL, seed INTEGER NOT NULL, model TEXT NOT NULL, judge TEXT NOT NULL, "
                 "split TEXT NOT NULL, config TEXT NOT NULL, versions TEXT NOT NULL, result TEXT NOT NULL)")
    old = _stored("sft", 0, 0.5) | {"config_hash": "abc", "attack": "harmful-finetune", "versions": {}}
    conn.execute("INSERT INTO runs VALUES ('abc', '2026-01-01', 'sft', 'harmful-finetune', 0, 'safetyworld', "
                 "'safetyworld', 'eval', '{}', '{}', ?)", (json.dumps(old),))
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version() == 2
    assert [r["config_hash"] for r in store.results()] == ["abc"]  # kept
    assert cli.main(["report", "--store", str(path)]) == 0
    captured = capsys.readouterr()
    assert "1 rows were made by code that has changed" in captured.err and "| sft |" not in captured.out


def test_run_key_changes_with_the_code_of_the_defense_only(monkeypatch):
    from immunity import cache

    cfg_b = load_run_config(None, [], defense="booster")
    cfg_s = load_run_config(None, [], defense="sft")
    before_b, before_s = run_key(cfg_b), run_key(cfg_s)
    real = cache._parsed

    def edited(module):
        digest, deps = real(module)
        return (digest + "edited", deps) if module == "immunity.defenses.booster" else (digest, deps)

    monkeypatch.setattr(cache, "_parsed", edited)
    assert run_key(cfg_b)["code_version"] != before_b["code_version"]
    assert run_key(cfg_s)["code_version"] == before_s["code_version"]


def test_recipes_are_valid_configurations():
    from pathlib import Path

    from immunity.data.sources import parse_source

    recipes = sorted((Path(__file__).parents[1] / "configs" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        cfg = load_run_config(str(path))  # every key known, every value typed
        assert cfg.model != "safetyworld" and cfg.data and cfg.eval.judge != "auto", path
        for source in cfg.data:
            if ":" not in source.split("#")[0].split("=", 1)[-1]:  # hub sources parse offline
                parse_source(source)
