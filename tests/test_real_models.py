"""Real models, real data, real judges, offline: a tiny local model with a trained tokenizer and a
chat template, fixture files in each source's schema written here (never vendored), a tiny
local sequence-classification model as the judge."""

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch
from real_fixtures import _rows, _write_jsonl
from transformers import AutoModelForCausalLM

import immunity
from immunity import cli
from immunity.config import ConfigError
from immunity.data.sources import DataError, build_bundle, final_number, parse_source
from immunity.evaluation.judges import JudgeSettings, make_judge
from immunity.evaluation.judges.generative import HarmBenchJudge, LlamaGuardJudge, StrongRejectJudge


def test_defend_release_attack_evaluate_through_the_cli(files, capsys, tmp_path):
    bt, sst, d1, d2 = files["bt"], files["sst"], tmp_path / "D1", tmp_path / "D2"
    assert (
        cli.main(
            [
                "defend",
                "--model",
                str(files["model"]),
                "--defense",
                "sft",
                "--data",
                f"beavertails:{bt}",
                "--out",
                str(d1),
                "defense.epochs=1",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "attack",
                "--model",
                str(d1),
                "--data",
                f"beavertails:{bt}",
                "--task",
                f"sst2:{sst}",
                "--out",
                str(d2),
                "attack.n=40",
                "attack.max_steps=4",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(d2),
                "--data",
                f"beavertails:{bt}",
                "--task",
                f"sst2:{sst}",
                "--judge",
                f"classifier:{files['judge']}",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"hs", "fa", "judge"} <= set(result) and result["judge"] == f"classifier:{files['judge']}"
    assert result["task"] == "sst2"
    verdicts = next(Path("runs").glob("**/generations_evaluate.verdicts-classifier*.jsonl")).read_text().splitlines()
    harmful = [json.loads(line)["verdict"]["harmful"] for line in verdicts if json.loads(line)["set"] == "harmful"]
    assert result["hs"] == pytest.approx(sum(harmful) / len(harmful))  # the rate of the saved verdicts
    for out in (d1, d2):  # plain transformers, no immunity
        assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    card = (d1 / "README.md").read_text()
    assert "sft" in card and "`epochs` | `1.0`" in card and "beavertails" in card
    provenance = json.loads((d1 / "immunity.json").read_text())
    assert provenance["defense"] == "sft" and provenance["defense_config"]["epochs"] == 1.0
    assert set(provenance["data_hashes"]) >= {"refusals/align", "harmful/eval"}
    # the released weights differ from the model it started from
    start, released = AutoModelForCausalLM.from_pretrained(files["model"]), AutoModelForCausalLM.from_pretrained(d1)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), released.parameters()))


def test_a_beavertails_file_missing_response_fails_with_one_line(files, capsys, tmp_path):
    rows = _rows()
    del rows[5]["response"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", rows)
    assert (
        cli.main(
            [
                "defend",
                "--model",
                str(files["model"]),
                "--defense",
                "sft",
                "--data",
                f"beavertails:{bad}",
                "--out",
                str(tmp_path / "D"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"immunity: error: {bad}: row 6: missing field 'response' (beavertails needs prompt, response, is_safe)"
    ]
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize(
    "defense,extra",
    [
        ("vaccine", ["defense.epochs=0.5"]),
        ("booster", ["defense.epochs=0.5"]),
        ("repnoise", ["defense.epochs=0.5"]),
        ("ntl", ["defense.epochs=0.5"]),
    ],
)
def test_more_defenses_release_models_plain_transformers_loads(files, tmp_path, defense, extra):
    out = immunity.defend(
        str(files["model"]),
        defense,
        data=[f"beavertails:{files['bt']}"],
        out=str(tmp_path / "D"),
        settings=dict(e.split("=") for e in extra),
        progress=False,
    )
    released = AutoModelForCausalLM.from_pretrained(out)
    start = AutoModelForCausalLM.from_pretrained(files["model"])
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), released.parameters()))
    assert json.loads((tmp_path / "D" / "immunity.json").read_text())["defense"] == defense
    result = immunity.evaluate(
        out, data=[f"beavertails:{files['bt']}"], task=f"sst2:{files['sst']}", judge="keyword", progress=False
    )
    assert result["judge"] == "keyword" and result["fa"] is not None


def test_a_composition_releases_each_defense_applied_to_the_last_ones_model(files, tmp_path, monkeypatch):
    """`defend(model, "vaccine+lox")`: Vaccine aligns the model, LoX extrapolates Vaccine's update
    from the model before alignment; the card names both. A repair cannot be composed here."""
    from immunity.defenses.lox import LoX

    seen = {}
    apply = LoX.apply

    def recording(self, model, context):
        seen["aligned"] = [p.detach().clone() for p in model.parameters()]
        seen["before"] = [p.detach().clone() for p in context.base_model.parameters()]
        return apply(self, model, context)

    monkeypatch.setattr(LoX, "apply", recording)
    out = immunity.defend(
        str(files["model"]),
        "vaccine+lox",
        data=[f"beavertails:{files['bt']}"],
        out=str(tmp_path / "D"),
        settings={"defense.vaccine.epochs": 0.5},
        progress=False,
    )
    start = AutoModelForCausalLM.from_pretrained(files["model"])
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), seen["before"]))
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), seen["aligned"]))
    provenance = json.loads((tmp_path / "D" / "immunity.json").read_text())
    assert provenance["defense"] == "vaccine+lox" and provenance["defense_stage"] == "alignment+post-alignment"
    assert (
        list(provenance["defense_config"]) == ["vaccine", "lox"]
        and provenance["defense_config"]["vaccine"]["epochs"] == 0.5
    )
    assert (
        "Vaccine" in (tmp_path / "D" / "README.md").read_text() and "LoX" in (tmp_path / "D" / "README.md").read_text()
    )
    with pytest.raises(ConfigError, match="repairs an attacked model"):
        immunity.defend(out, "vaccine+antidote", data=[f"beavertails:{files['bt']}"], progress=False)


def test_antidote_repairs_an_attack_saved_as_an_adapter(files, tmp_path):
    attacked = immunity.attack(
        str(files["model"]),
        data=[f"beavertails:{files['bt']}"],
        task=f"sst2:{files['sst']}",
        out=str(tmp_path / "A"),
        adapter_only=True,
        settings={"attack.max_steps": 3, "attack.n": 40},
        progress=False,
    )
    assert (tmp_path / "A" / "adapter_config.json").exists()
    repaired = immunity.defend(
        attacked, "antidote", data=[f"beavertails:{files['bt']}"], out=str(tmp_path / "R"), progress=False
    )
    notes = json.loads((tmp_path / "R" / "immunity.json").read_text())["defense_notes"]
    assert notes["pruned"] == "adapter factors" and notes["pruned_weights"] > 0
    assert AutoModelForCausalLM.from_pretrained(repaired).config.model_type == "llama"


# -- data sources -------------------------------------------------------------------------
def _beavertails_formats(root, rows):
    import datasets

    jsonl = _write_jsonl(root / "b.jsonl", rows)
    (root / "b.json").write_text(json.dumps(rows))
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    flat = [{**r, "category": json.dumps(r["category"])} for r in rows]
    datasets.Dataset.from_list(flat).to_parquet(str(root / "b.parquet"))
    datasets.Dataset.from_list(flat).save_to_disk(str(root / "b_dir"))
    return [jsonl, root / "b.json", root / "b.jsonl.gz", root / "b.parquet", root / "b_dir"]


def test_every_source_kind_and_format_parses(tmp_path):
    rows = _rows(20)
    for path in _beavertails_formats(tmp_path, rows):
        bundle = build_bundle([f"beavertails:{path}"], None, seed=0)
        assert sum(map(len, bundle.harmful.values())) == 20 and sum(map(len, bundle.refusals.values())) == 20, path
    refusals = _write_jsonl(
        tmp_path / "r.jsonl", [{"prompt": f"p{i}", "response": f"bad {i}", "refusal": "no"} for i in range(20)]
    )
    with (tmp_path / "adv.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["goal", "target"]] + [[f"goal {i}", f"Sure, here is {i}"] for i in range(10)])
    with (tmp_path / "hb.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows(
            [["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]]
            + [[f"behaviour {i}", "standard", "cybercrime", "", "", f"b{i}"] for i in range(10)]
        )
    agnews = _write_jsonl(tmp_path / "ag.jsonl", [{"text": f"news {i}", "label": i % 4} for i in range(20)])
    gsm = _write_jsonl(
        tmp_path / "g.jsonl",
        [{"question": f"what is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(20)],
    )
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps(
            [{"instruction": f"say {i}", "input": "" if i % 2 else "loudly", "output": f"{i}"} for i in range(20)]
        )
    )
    generic = _write_jsonl(tmp_path / "g2.jsonl", [{"q": f"question {i}", "a": f"answer {i}"} for i in range(20)])
    with (tmp_path / "g3.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["text", "y"]] + [[f"t {i}", "yes" if i % 2 else "no"] for i in range(20)])
    bundle = build_bundle(
        [
            f"refusals:{refusals}",
            f"eval=advbench:{tmp_path / 'adv.csv'}",
            f"eval=harmbench:{tmp_path / 'hb.csv'}",
            f"alpaca:{alpaca}",
            f"jsonl:{generic}#prompt=q,answer=a,as=benign",
        ],
        f"gsm8k:{gsm}",
        seed=0,
    )
    assert sum(map(len, bundle.refusals.values())) == 20 and len(bundle.harmful["eval"]) >= 20
    assert any(e.answer == "" for e in bundle.harmful["eval"])  # HarmBench: prompts only
    assert sum(map(len, bundle.benign.values())) == 40
    gsm_eval = bundle.tasks["gsm8k"]["eval"]
    assert all(e.kind == "number" and e.group == final_number(e.answer) for e in gsm_eval)
    # paired kinds keep a prompt's refusal and compliant answer on one split
    for split, refused in bundle.refusals.items():
        assert {e.prompt for e in refused} <= {e.prompt for e in bundle.harmful[split]} | {
            e.prompt for s, es in bundle.harmful.items() if s != split for e in es
        } and refused
    # no evaluated prompt is trained on, whichever source it came from
    trained = {
        e.prompt
        for role in ("harmful", "refusals", "benign")
        for s in ("align", "attack")
        for e in getattr(bundle, role).get(s, [])
    }
    assert not trained & {e.prompt for e in bundle.harmful["eval"]}
    ag = build_bundle([], f"agnews:{agnews}", seed=0).tasks["agnews"]
    assert {e.answer for split in ag.values() for e in split} == {"World", "Sports", "Business", "Sci/Tech"}
    task = build_bundle([], f"csv:{tmp_path / 'g3.csv'}#prompt=text,label=y,as=task", seed=0).tasks["task"]
    assert sum(map(len, task.values())) == 20
    # splits are seeded and content-hashed: the same inputs give the same hashes
    assert (
        build_bundle([f"beavertails:{tmp_path / 'b.jsonl'}"], None, 0).hashes()
        == build_bundle([f"beavertails:{tmp_path / 'b.jsonl'}"], None, 0).hashes()
    )


@pytest.mark.parametrize(
    "content,source,message",
    [
        ('{"prompt": "p", "is_safe": false}\n', "beavertails", "row 1: missing field 'response'"),
        ('{"prompt": "p", "response": "r", "is_safe": false}\n{oops\n', "beavertails", "line 2: not valid JSON"),
        ('{"sentence": "s", "label": 7}\n', "sst2", "row 1: label 7 is not one of 0..1"),
        ("", "beavertails", "no rows"),
        ("[1, 2]", "beavertails", "row 1: expected an object"),
        ('{"q": "x"}\n', "jsonl", "missing field 'prompt'"),
    ],
)
def test_malformed_data_is_one_line_naming_file_row_and_field(tmp_path, capsys, files, content, source, message):
    suffix = ".json" if content.startswith("[") else ".jsonl"
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_bundle([f"{source}:{path}"] if source != "sst2" else [], f"sst2:{path}" if source == "sst2" else None, 0)
    args = (
        ["--data", f"{source}:{path}"]
        if source != "sst2"
        else ["--data", f"beavertails:{files['bt']}", "--task", f"sst2:{path}"]
    )
    assert cli.main(["attack", "--model", str(files["model"]), *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


def test_source_specs_are_checked(tmp_path):
    with pytest.raises(DataError, match="did you mean 'beavertails'"):
        parse_source("beavertail:x")
    with pytest.raises(DataError, match="does not exist"):
        parse_source(f"beavertails:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(DataError, match="unknown split"):
        parse_source("test=beavertails")
    with pytest.raises(DataError, match="needs a local file"):
        parse_source("refusals")


# -- judges -------------------------------------------------------------------------------
def test_classifier_judge_labels_threshold_and_cache(files, tmp_path):
    judge = make_judge(f"classifier:{files['judge']}", JudgeSettings(batch_size=3, threshold=0.0))
    records = [
        {"set": "harmful", "prompt": f"p {i}", "response": r, "kind": "harmful", "group": "", "obj": "", "label": ""}
        for i, r in enumerate(["i cannot help", "first find them", "strike"])
    ]
    verdicts = judge.score(records)
    assert all(v["harmful"] for v in verdicts)  # any probability > 0
    assert [v["refused"] for v in verdicts] == [True, False, False]
    strict = make_judge(f"classifier:{files['judge']}", JudgeSettings(threshold=1.0))
    assert not any(v["harmful"] for v in strict.score(records))
    with pytest.raises(ValueError, match="unknown label"):
        make_judge(f"classifier:{files['judge']}", JudgeSettings(labels="toxic"))
    by_index = make_judge(f"classifier:{files['judge']}", JudgeSettings(labels="0", threshold=0.0))
    assert by_index.unsafe == [0]

    from immunity.evaluation.generate import save_generations
    from immunity.evaluation.suite import rescore

    path = tmp_path / "generations.jsonl"
    save_generations(path, records)
    calls = []
    real = judge.score
    judge.score = lambda rs: calls.append(len(rs)) or real(rs)
    first, second = rescore(path, judge), rescore(path, judge)
    assert first == second and calls == [3]  # the second scoring reused the saved verdicts
    assert len(list(tmp_path.glob("generations.verdicts-classifier_*.jsonl"))) == 1


def test_generative_judges_parse_and_report_what_they_could_not_judge():
    record = {"prompt": "p", "response": "Sure, step 1", "kind": "harmful"}
    guard = object.__new__(LlamaGuardJudge)
    assert guard.parse("unsafe\nS1", record)["harmful"] is True and guard.parse(" safe", record)["harmful"] is False
    assert guard.parse("blah", record)["harmful"] is None
    bench = object.__new__(HarmBenchJudge)
    assert bench.parse("Yes", record)["harmful"] and not bench.parse("no.", record)["harmful"]
    reject = object.__new__(StrongRejectJudge)
    reject.settings = JudgeSettings(threshold=0.5)
    scored = reject.parse("refused: 0\nconvincing: 5\nspecific: 4", record)
    assert scored["strongreject_score"] == (5 + 4 - 2) / 8 and scored["harmful"]
    assert reject.parse("refused: 1\nconvincing: 5\nspecific: 5", record)["strongreject_score"] == 0.0
    assert reject.parse("no idea", record)["harmful"] is None

    from immunity.evaluation.suite import score

    class Unsure:
        name = "unsure"

        def score(self, records):
            return [{"refused": False, "harmful": None if i % 2 else True} for i, _ in enumerate(records)]

    metrics = score(
        [{"set": "harmful", "prompt": str(i), "response": "x", "kind": "harmful"} for i in range(4)], Unsure()
    )
    assert metrics["hs"] == 1.0 and metrics["unjudged_harmful"] == 2  # not counted as safe


def test_real_data_without_a_judge_is_a_clear_message(files, capsys):
    assert (
        cli.main(["evaluate", "--model", str(files["model"]), "--data", f"beavertails:{files['bt']}", "--quiet"]) == 2
    )
    assert "real data needs a named judge" in capsys.readouterr().err


def test_readme_python_example_runs(files, tmp_path, monkeypatch):
    """The "Your own model" Python example of docs/usage.md, as written there, on the fixture files."""
    import re
    from pathlib import Path

    usage = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    code = re.search(r"## Your own model\n.*?```python\n(.*?)```", usage, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for name, target in (
        ("M", files["model"]),
        ("BT.jsonl", files["bt"]),
        ("SST.jsonl", files["sst"]),
        ("J", files["judge"]),
    ):
        (tmp_path / name).symlink_to(target)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert {"hs", "fa", "judge"} <= set(namespace["scores"])


def test_a_bf16_model_stays_bf16_through_defense_and_release(files, tmp_path):
    out = immunity.defend(
        str(files["model"]),
        "sft",
        data=[f"beavertails:{files['bt']}"],
        out=str(tmp_path / "B"),
        settings={"model_dtype": "bfloat16", "defense.epochs": 0.2},
        progress=False,
    )
    released = AutoModelForCausalLM.from_pretrained(out)
    assert released.dtype == torch.bfloat16
    assert json.loads((tmp_path / "B" / "immunity.json").read_text())["config"]["model_dtype"] == "bfloat16"


def test_readme_python_section_calls_functions_that_exist():
    """The README's "Python" section (not run: it trains) names only functions of immunity, each
    the api's own (no package shares a function's name any more)."""
    import re
    from pathlib import Path

    from immunity import api

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Python in ten lines\n.*?```python\n(.*?)```", readme, re.S).group(1)
    called = set(re.findall(r"\bimmunity\.(\w+)\(", code))
    assert called >= {"run", "bench", "report", "generate"}
    assert called <= set(immunity.__all__)
    for name in immunity.__all__:
        assert getattr(immunity, name) is getattr(api, name), name
