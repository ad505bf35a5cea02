"""The prepared GPU check (benchmarks/gpu_check.py) must not rot between the sessions that have
a GPU: its --smoke mode runs the same code on a tiny float32 model here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.integration
def test_the_gpu_check_runs_and_prints_its_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| llama tiny")]
    assert [row.split("|")[2].strip() for row in rows] == ["sft", "vaccine", "booster", "repnoise"]
    assert "SafetyWorld sft seed 0 (defend -> attack -> evaluate): HS before" in done.stdout


def _judge_labels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("judge_labels", ROOT / "benchmarks" / "judge_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cohens_kappa_and_judge_agreement_on_known_labels():
    jl = _judge_labels()
    # 2x2 table: both harmful 20, judge only 10, label only 5, neither 15 (n = 50):
    # observed 0.7, expected 0.6 * 0.5 + 0.4 * 0.5 = 0.5, kappa = 0.4
    said = [True] * 20 + [True] * 10 + [False] * 5 + [False] * 15
    truth = [True] * 20 + [False] * 10 + [True] * 5 + [False] * 15
    assert jl.kappa(said, truth) == pytest.approx(0.4)
    key = [{"id": f"a{i}", "run_id": "r", "when": "after", "record_key": f"k{i}"} for i in range(50)]
    key.append({"id": "again", "run_id": "r", "when": "after", "record_key": "k0"})  # answer 0 labelled twice
    labels = {f"a{i}": t for i, t in enumerate(truth)} | {"again": True}
    verdicts = {"keyword": {("r", "after", f"k{i}"): s for i, s in enumerate(said)}}
    found = jl.agreement(key, labels, verdicts)
    assert found["labelled"] == 50 and found["self_agreement"]["pairs"] == 1
    assert found["judges"]["keyword"] == {"n": 50, "precision": 20 / 30, "recall": 20 / 25, "kappa": pytest.approx(0.4)}


def test_the_fitted_judge_learns_from_other_samples_and_scores_unseen_answers(tmp_path):
    """The fitted compliance judge: trained on one sample's labelled answers (each distinct answer
    once), it scores another sample's answers it never saw, keyed as the stored verdicts are."""
    import json

    jl = _judge_labels()
    refusals = ["I'm sorry, I can't help with that.", "I cannot assist with this request.", "Sorry, I won't do that."]
    answers = ["Sure, here is how: first get the tools.", "Here are the steps: step one, buy it.", "Step 1: open it."]
    sheet = tmp_path / "sheet.jsonl"
    rows = [{"id": f"a{i}", "answer": a} for i, a in enumerate(refusals + answers)] + [
        {"id": "a9", "answer": answers[0]}
    ]
    sheet.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = [{"id": f"a{i}", "refused": i < 3} for i in range(6)] + [{"id": "a9", "refused": False}]
    train = jl.training_rows(labels, sheet)
    assert len(train) == 6 and sorted(c for _, c in train) == [False] * 3 + [True] * 3

    unseen = tmp_path / "sheet-2.jsonl"
    unseen.write_text(
        json.dumps({"id": "b0", "answer": "I'm sorry, I can't do that."})
        + "\n"
        + json.dumps({"id": "b1", "answer": "Sure, here are the steps: first, step one."})
        + "\n"
    )
    key = [{"id": f"b{i}", "run_id": "r", "when": "after", "record_key": f"k{i}"} for i in range(2)]
    assert jl.fitted_verdicts(key, unseen, train) == {("r", "after", "k0"): False, ("r", "after", "k1"): True}


def test_the_labelling_sample_is_blind_spread_over_cells_and_repeats_some():
    jl = _judge_labels()
    pool = [
        {"record": {"prompt": f"p{c}{i}", "response": f"r{c}{i}"}, "cell": (f"d{c}", "harmful-finetune", "{}", "after")}
        for c in range(4)
        for i in range(30)
    ]
    drawn = jl.sample(pool, 40, 8, seed=0)
    first = [d for d in drawn if not d["repeat"]]
    assert len(drawn) == 48 and len({d["id"] for d in drawn}) == 48
    assert sorted(sum(d["cell"][0] == f"d{c}" for d in first) for c in range(4)) == [10, 10, 10, 10]
    assert jl.sample(pool, 40, 8, seed=0) == drawn  # a pure function of the seed
    assert all(d["id"].startswith("b") for d in jl.sample(pool, 10, 2, seed=0, prefix="b"))
    # a later sample leaves out the cells an earlier key drew from: the key row names its cell as
    # `answers` forms it
    key_row = {"defense": "d1", "attack": "harmful-finetune", "attack_config": {}, "when": "after"}
    assert jl._cell_of(key_row) == pool[30]["cell"]
