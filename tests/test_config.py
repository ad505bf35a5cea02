"""Configuration and the command line: keys, YAML and overrides, run keys, recipes (in process)."""

import json

import pytest

from immunity import cli
from immunity.config import ConfigError, RunConfig, build_config, load_run_config
from immunity.defenses.sft import SFTConfig
from immunity.engine.identity import RunIdentity


def config_hash(cfg):
    return RunIdentity.of(cfg).config_hash


def run_key(cfg):
    return RunIdentity.of(cfg).key()


def test_list_json_names_everything(capsys):
    assert cli.main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"defenses", "attacks", "tasks", "judges", "models"}
    assert {"none", "sft", "booster", "antidote", "et", "lapt", "ilu", "antidote-hypernet"} <= set(out["defenses"])
    assert len(out["defenses"]) >= 19  # the 15 methods, the baselines none, scratch, sft, antidote-hypernet; plugins
    assert set(out["attacks"]) >= {
        "harmful-finetune",
        "benign-finetune",
        "steering",
        "reft",
        "embedding",
        "refusal-ablation",
        "backdoor",
        "prefill",
    }
    assert "safetyworld" in out["judges"]
    assert set(out["tasks"]) >= {"sentiment", "topic", "arithmetic"}


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
    hashes = {
        config_hash(load_run_config(None, ["defense.rho=5"], defense="vaccine")),
        config_hash(load_run_config(None, ["defense.rho=5.0"], defense="vaccine")),
        config_hash(load_run_config(str(yaml_file))),
    }
    assert len(hashes) == 1
    assert config_hash(load_run_config(None, ["defense.rho=5.5"], defense="vaccine")) not in hashes
    # out_dir decides where generations go, not what the run computes
    assert config_hash(load_run_config(None, ["out_dir=elsewhere"])) == config_hash(load_run_config(None, []))


def test_run_json_round_trip_with_overrides_anywhere(capsys, tiny):
    code = cli.main(
        [
            "run",
            "attack.p=0.2",
            "--defense",
            "sft",
            *tiny,
            "--seed",
            "1",
            "--json",
            "--quiet",
            "attack.schedule=cosine",
            "attack.task=topic",
            "attack.lr=1e-3",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["defense"] == "sft" and result["seed"] == 1 and result["attack"] == "harmful-finetune"
    assert result["attack_config"]["p"] == 0.2 and result["attack_config"]["task"] == "topic"
    assert result["attack_config"]["schedule"] == "cosine" and result["attack_config"]["lr"] == 1e-3
    assert result["judge"] == "safetyworld" and result["versions"]["torch"]
    assert {"base", "defend", "attack", "eval_before", "eval_after"} <= set(result["timings"])
    assert result["harmful_nll_before"] > 0 and result["harmful_nll_after"] > 0
    assert len(result["code_version"]) == 12 and len(result["run_id"]) == 16


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


def test_a_tracks_settings_change_its_runs_config_not_every_runs_code_version(monkeypatch, tmp_path):
    """tracks.py is data: a run on a track carries the track's budgets in its resolved config, so a
    changed budget re-identifies that track's runs (config hash) and no other run's code version."""
    import json

    from immunity import cache, tracks
    from immunity.engine.identity import run_code_version

    model = tmp_path / "model"
    model.mkdir()
    (model / "immunity.json").write_text(json.dumps({"track": tracks.SMOLLM2.name}))  # as `prepare` writes it
    before = run_code_version("sft", "harmful-finetune", "safetyworld")
    real = cache._parsed
    monkeypatch.setattr(
        cache, "_parsed", lambda m: (real(m)[0] + "edited", real(m)[1]) if m == "immunity.tracks" else real(m)
    )
    assert run_code_version("sft", "harmful-finetune", "safetyworld") == before
    cfg = load_run_config(None, [f"model={model}"], defense="sft")
    assert cfg.attack.max_steps == tracks.SMOLLM2.attacks["harmful-finetune"]["max_steps"]
    changed = tracks.Track(**{**vars(tracks.SMOLLM2), "attacks": {"harmful-finetune": {"max_steps": 12}}})
    monkeypatch.setitem(tracks.TRACKS, tracks.SMOLLM2.name, changed)
    assert load_run_config(None, [f"model={model}"], defense="sft").attack.max_steps == 12


def test_code_version_ignores_types_and_docstrings_but_not_behaviour():
    import ast

    from immunity.cache import _behaviour

    def digest(source: str) -> str:
        return ast.dump(_behaviour(ast.parse(source)))

    plain = "import torch\n\n@dataclass\nclass C:\n    lr = 1.0\n    n: int = 2\n\ndef f(x, y=1):\n    t = x + y\n    return t\n"
    typed = (
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING, cast\nimport torch\n"
        'if TYPE_CHECKING:\n    from x import Y\n\n@dataclass\nclass C:\n    """Doc."""\n    lr = 1.0\n'
        "    n: list[int] | None = 2\n\ndef f(x: Y, y: int = 1) -> int:\n    z: int\n    t: int = cast(int, x) + y\n"
        "    return t\n"
    )
    assert digest(typed) == digest(plain)
    # a field (annotated) is not a class attribute (unannotated): behaviour, kept apart
    assert digest(plain.replace("n: int = 2", "n = 2")) != digest(plain)
    assert digest(plain.replace("x + y", "x - y")) != digest(plain)
    assert digest(plain.replace("t = x + y", "t = x + y\n    t += 1")) != digest(plain)
    assert digest(plain.replace("y=1", "y=2")) != digest(plain)
    assert digest(plain.replace("import torch", "import numpy")) != digest(plain)


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
