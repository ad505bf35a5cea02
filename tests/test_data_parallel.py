"""Data parallelism (`immunity.training.parallel`): two processes under torchrun (gloo, CPU) give
the losses of one process with two micro-batches per step, for every method whose training the
issue names, bi-level and meta-learning ones included; and for a loss that is a mean over
examples, micro-batches give the whole batch's gradient."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from immunity.training import lm_loss, parallel

HERE = Path(__file__).parent
METHODS = [
    "sft",
    "vaccine",
    "t-vaccine",
    "booster",
    "repnoise",
    "circuit-breakers",
    "mlac",
    "sophon",
    "tar",
    "ntl",
    "condition-number",
]
SHARDABLE = ["sft", "vaccine", "t-vaccine", "repnoise", "circuit-breakers", "ntl", "condition-number"]

pytestmark = pytest.mark.integration  # several processes each: the integration tier


def _worker(tmp_path, launcher: list[str], micro: int, *extra: str) -> dict:
    out = tmp_path / f"losses-{micro}-{'-'.join(extra)}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    done = subprocess.run(
        [*launcher, str(HERE / "dp_worker.py"), str(out), str(micro), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


@pytest.fixture(scope="module")
def one_process_two_micro_batches(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp("one"), [sys.executable], 2)


def test_two_processes_match_one_process_with_two_micro_batches(tmp_path, one_process_two_micro_batches):
    two, one = _worker(tmp_path, _torchrun(29731), 1), one_process_two_micro_batches
    assert two["processes"] == 2 and one["processes"] == 1
    assert "DTensor" not in two["trained_as"]  # replicated: plain parameters
    for method in METHODS:
        assert len(two["losses"][method]) == 5, method
        assert two["losses"][method] == pytest.approx(one["losses"][method], rel=1e-5), method


def test_fsdp_over_two_processes_matches_one_process(tmp_path, one_process_two_micro_batches):
    """FSDP2 on CPU (gloo): the trained parameters are sharded DTensors, the losses those of one
    process with two micro-batches (equal shards of the alignment batches)."""
    sharded = _worker(tmp_path, _torchrun(29732), 1, ",".join(SHARDABLE), "fsdp")
    assert sharded["processes"] == 2 and "DTensor" in sharded["trained_as"]  # (the world's pretraining is plain)
    for method in SHARDABLE:
        assert sharded["losses"][method] == pytest.approx(one_process_two_micro_batches["losses"][method], rel=1e-5), (
            method
        )


@pytest.mark.parametrize("defense", sorted(set(METHODS) - set(SHARDABLE)))
def test_fsdp_refuses_a_defense_that_differentiates_the_weights_themselves(defense):
    from immunity.config import ConfigError, load_run_config, validate

    with pytest.raises(ConfigError, match="fsdp=true"):
        validate(load_run_config(None, ["fsdp=true"], defense=defense))


def test_micro_batches_of_a_mean_loss_give_the_whole_batch_gradient(tiny_model, world):
    """Examples with equal lengths and answer lengths: the token-mean is then the mean of the
    micro-batch means, so 4 micro-batches must give the whole batch's loss and gradient."""
    from immunity.data import collate, encode_chat

    groups = {}
    for e in world.data.benign["align"]:
        f = encode_chat(world.tokenizer, e.prompt, e.answer)
        groups.setdefault((len(f["input_ids"]), sum(x != -100 for x in f["labels"])), []).append(f)
    features = max(groups.values(), key=len)[:8]
    assert len(features) == 8
    batch = collate(features, world.tokenizer.pad_token_id)
    model = tiny_model()
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(micro: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)

        def compute() -> float:
            loss = lm_loss(model, parallel.shard(batch))
            loss.backward()
            return loss.item()

        with parallel.data_parallel(micro):
            value = parallel.accumulate(params, compute, seed=0, step=1)
        return value, [p.grad.clone() for p in params]

    whole, whole_grads = gradient(1)
    split, split_grads = gradient(4)
    assert parallel.shard_count() == 1  # the context restores one shard
    assert split == pytest.approx(whole, rel=1e-9)
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(float(g.abs().max()) > 0 for g in whole_grads)


def test_a_shard_is_a_contiguous_slice_and_streams_replay_a_step():
    batch = {"input_ids": torch.arange(10).view(5, 2)}
    with parallel.data_parallel(2):
        assert parallel.shard(batch, 0)["input_ids"].tolist() == [[0, 1], [2, 3], [4, 5]]
        assert parallel.shard(batch, 1)["input_ids"].tolist() == [[6, 7], [8, 9]]
        stream = parallel.SharedStream(iter([{"x": torch.arange(4)}, {"x": torch.arange(4, 8)}]))
        seen = []
        parallel.accumulate([], lambda: seen.append(next(stream)["x"].tolist()) or 0.0, seed=0, step=1)
        assert seen == [[0, 1], [2, 3]]  # both micro-batches read the step's first global batch
        seen.clear()
        parallel.accumulate([], lambda: seen.append(next(stream)["x"].tolist()) or 0.0, seed=0, step=2)
        assert seen == [[4, 5], [6, 7]]


def test_micro_batches_must_be_positive():
    with pytest.raises(ValueError, match="micro_batches"):
        with parallel.data_parallel(0):
            pass


def test_a_whole_run_under_torchrun_prints_one_result_and_stores_it_once(tiny, tmp_path):
    store = tmp_path / "ddp.db"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            *_torchrun(29733),
            "-m",
            "immunity",
            "run",
            "--defense",
            "sft",
            "--seed",
            "0",
            "--json",
            "--quiet",
            "--store",
            str(store),
            *tiny,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["processes"] == 2 and result["hs_before"] is not None and result["fa_after"] is not None
    assert len(list(tmp_path.glob("runs/sft-seed0-*/generations_before.jsonl"))) == 1
    import sqlite3

    assert sqlite3.connect(store).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"])
def test_an_accelerate_sharding_config_gets_a_clear_error(variable, monkeypatch):
    from immunity.config import ConfigError, load_run_config, validate

    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match="fsdp=true"):
        validate(load_run_config(None, [], defense="sft"))
