"""Faults and bad input: every bad input gets one line, exit status 2 and no traceback, before
any work; crashes and concurrent workers lose, duplicate and corrupt nothing (real processes)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

from immunity import cli
from immunity.cache import cached_model, entry_is_complete, write_manifest
from immunity.engine.pipeline import Pipeline
from immunity.grid.store import Store

# -- bad input, in process (fast) ---------------------------------------------------------
BAD_RUNS = [
    (["--defense", "sfft"], "did you mean 'sft'"),
    (["attack_name=harmful-finetun"], "did you mean 'harmful-finetune'"),
    (["eval.judge=keywrd"], "did you mean 'keyword'"),
    (["attack.lrr=1e-3"], "did you mean 'attack.lr'"),
    (["--defense", "vaccine", "defense.rhoo=5"], "did you mean 'rho'"),
    (["attack.p=abc"], "attack.p: expected float"),
    (["attack.p=1.5"], "attack.p must lie in [0, 1]"),
    (["attack.n=-5"], "attack.n must be positive"),
    (["attack.n=0"], "attack.n must be positive"),
    (["attack.lr=0"], "attack.lr must be positive"),
    (["attack.epochs=0"], "attack budget must be positive"),
    (["attack.epochs=-3"], "attack budget must be positive"),
    (["attack.batch_size=0"], "attack.batch_size must be positive"),
    (["attack.lora_r=0"], "attack.lora_r must be positive"),
    (["attack.mode=qlora"], "attack.mode"),
    (["attack.task=nope"], "attack.task"),
    (["attack.schedule=nope"], "attack.schedule"),
    (["defense.epochs=0"], "must be positive"),
    (["--defense", "antidote", "defense.ratio=1.5"], "antidote ratio"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens"),
    (["eval.split=test"], "eval.split"),
    (["model=/nonexistent/model"], "does not exist"),
    (["--seed", "0", "seed=x"], "seed: expected int"),
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("immunity: error: "), err
    return err[0]


def _no_work_started():
    cache = Path(os.environ["IMMUNITY_CACHE"])
    assert not cache.exists() or not any(p.name.startswith(("pretrain-", "aligned-")) for p in cache.iterdir())


@pytest.mark.parametrize("args,message", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_run_input_is_one_line_before_any_work(args, message, capsys):
    assert cli.main(["run", *args]) == 2
    assert message in _error_line(capsys)
    _no_work_started()


@pytest.mark.parametrize(
    "text,message",
    [
        ("attack: [1, 2", "not valid YAML (line"),
        ("- a\n- b\n", "expected a mapping of keys at the top level"),
        ("defense_args:\n  - lr\n", "defense_args must be a mapping"),
        ("attack:\n  lr: [1, 2]\n", "attack.lr: expected float"),
        ("seed: 0\nattack:\n  n: 2.5\n", "attack.n: expected int"),
    ],
)
def test_bad_yaml_is_one_line(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["run", "--config", str(path)]) == 2
    assert message in _error_line(capsys)
    assert cli.main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in _error_line(capsys)


def _model_dir(tmp_path, world, tiny_model, name):
    path = tmp_path / name
    tiny_model("llama", torch.float32).save_pretrained(path, safe_serialization=True)
    world.tokenizer.save_pretrained(path)
    return path


def test_bad_model_directories_are_one_line(tmp_path, world, tiny_model, capsys):
    pickled = _model_dir(tmp_path, world, tiny_model, "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    truncated = _model_dir(tmp_path, world, tiny_model, "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_tokenizer = _model_dir(tmp_path, world, tiny_model, "no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    cases = [
        (pickled, "pickle weights are never loaded"),
        (truncated, "corrupt or truncated safetensors"),
        (no_tokenizer, "no tokenizer files"),
        (tmp_path / "absent", "does not exist"),
    ]
    capsys.readouterr()  # the fixtures' own saving output
    for path, message in cases:
        assert cli.main(["run", f"model={path}"]) == 2
        assert message in _error_line(capsys), path
    _no_work_started()


def test_bad_stores_and_unwritable_paths_are_one_line(tmp_path, capsys, monkeypatch, tiny):
    assert cli.main(["report", "--store", str(tmp_path / "missing.db")]) == 2
    assert "no results store" in _error_line(capsys)
    assert not (tmp_path / "missing.db").exists()  # report does not create it
    (tmp_path / "text.db").write_text("not a database, just text\n" * 100)
    assert cli.main(["report", "--store", str(tmp_path / "text.db")]) == 2
    assert "not a usable results store" in _error_line(capsys)
    Store(tmp_path / "empty.db")
    assert cli.main(["report", "--store", str(tmp_path / "empty.db")]) == 2
    assert "holds no results" in _error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["run", *tiny, "--store", str(blocker / "sub" / "r.db")]) == 2
    assert "results store's directory" in _error_line(capsys)
    monkeypatch.setenv("IMMUNITY_CACHE", str(blocker / "cache"))
    assert cli.main(["run", *tiny]) == 2
    assert "model cache" in _error_line(capsys)


def test_bench_validates_its_whole_grid_before_the_first_run(tiny, capsys, monkeypatch):
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("a run started"))
    assert cli.main(["bench", "--defenses", "sft,vacine", "--seeds", "0", "--store", "r.db", *tiny]) == 2
    assert "did you mean 'vaccine'" in _error_line(capsys)
    assert (
        cli.main(["bench", "--defenses", "sft", "--seeds", "0", "--grid", "attack.p=0.1,1.5", "--store", "r.db", *tiny])
        == 2
    )
    assert "attack.p must lie in [0, 1]" in _error_line(capsys)
    assert cli.main(["bench", "--defenses", "sft", "--seeds", "0,x", *tiny]) == 2
    assert "comma-separated integers" in _error_line(capsys)


def test_a_diverged_run_names_stage_and_step_and_stores_nothing(tiny, capsys):
    args = ["run", *tiny, "attack.lr=1e30", "attack.mode=full", "--store", "r.db", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("immunity: error:")]
    assert len(errors) == 1 and "Traceback" not in err  # (progress lines before it are the run's work)
    assert errors[0].startswith("immunity: error: attack: the") and "at step" in errors[0]
    assert "stored no result" in errors[0]
    assert Store("r.db").results() == []


def test_home_directory_in_model_path_is_expanded(tmp_path, world, tiny_model, monkeypatch):
    from immunity.config import load_run_config, validate

    monkeypatch.setenv("HOME", str(tmp_path))
    _model_dir(tmp_path, world, tiny_model, "m")
    cfg = load_run_config(None, ["model=~/m"])
    assert cfg.model == str(tmp_path / "m")
    validate(cfg)


# -- real processes ---------------------------------------------------------------------
def _immunity(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "immunity", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.integration
def test_a_real_process_prints_one_line_and_no_traceback_unless_debug():
    proc = _immunity("run", "--defense", "sfft", env=_env())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "did you mean 'sft'" in err and "Traceback" not in err
    proc = _immunity("--debug", "run", "--defense", "sfft", env=_env())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" in err


def _rows(path):
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return []  # the file exists, its schema is not written yet
        return conn.execute("SELECT run_id, created FROM runs").fetchall()
    finally:
        conn.close()


@pytest.mark.integration
def test_kill_9_mid_bench_loses_no_row_and_recomputes_none(tiny, tmp_path):
    store = tmp_path / "k.db"
    args = [
        "bench",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.05,0.1,0.2",
        "--store",
        str(store),
        "--quiet",
        *tiny,
    ]
    proc = _immunity(*args, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and (not store.exists() or len(_rows(store)) < 1):
        time.sleep(0.2)
    time.sleep(0.5)  # somewhere inside the next run
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    first = dict(_rows(store))
    assert 1 <= len(first) < 4
    proc = _immunity(*args, env=_env())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{len(first)} already stored, {4 - len(first)} to run" in err
    after = dict(_rows(store))
    assert len(after) == 4 and all(after[k] == v for k, v in first.items())  # nothing recomputed


@pytest.mark.integration
def test_two_workers_on_one_store_compute_each_run_once(tiny, tmp_path):
    store = tmp_path / "c.db"
    common = ["bench", "--defenses", "sft", "--seeds", "0", "--store", str(store), "--quiet", *tiny]
    a = _immunity(*common, "--grid", "attack.p=0,0.05,0.1", env=_env())
    b = _immunity(*common, "--grid", "attack.p=0.05,0.1,0.2", env=_env())
    (_, err_a), (_, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert "locked" not in err_a + err_b
    computed = [line for line in (err_a + err_b).splitlines() if line.startswith("[")]
    rows = _rows(store)
    assert len(rows) == 4 and len({r[0] for r in rows}) == 4
    assert len(computed) == 4, computed  # every run computed by exactly one worker


def _build_entry(path, marker):
    def build():
        Path(marker).write_text(str(os.getpid()))
        time.sleep(1.0)  # long enough for the other process to arrive
        return torch.nn.Linear(3, 3)

    def save(model, target):
        tmp = Path(f"{target}.writing-{os.getpid()}")
        tmp.mkdir()
        torch.save(model.state_dict(), tmp / "weights.pt")
        write_manifest(tmp)
        os.rename(tmp, target)

    cached_model(Path(path), build, lambda p: "loaded", save)


@pytest.mark.integration
def test_two_processes_filling_one_cache_entry_train_once(tmp_path):
    entry = tmp_path / "cache" / "entry"
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_build_entry, args=(entry, tmp_path / f"built-{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("built-*"))) == 1  # one built, the other waited and loaded
    assert entry_is_complete(entry)
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry", "entry.lock"]  # no orphans


def test_a_truncated_cache_entry_is_rebuilt_never_loaded(tiny, capsys):
    from immunity.config import load_run_config
    from immunity.engine.pipeline import Pipeline

    cfg = load_run_config(None, tiny, defense="sft")
    Pipeline(cfg, progress=False).base_model()
    entry = next(
        p for p in Path(os.environ["IMMUNITY_CACHE"]).iterdir() if p.name.startswith("pretrain-") and p.is_dir()
    )
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert not entry_is_complete(entry)
    capsys.readouterr()
    model = Pipeline(cfg, progress=False).base_model()
    assert "incomplete; moved to" in capsys.readouterr().err
    assert entry_is_complete(entry) and model.config.model_type == "llama"


def _writer(path, worker, count):
    store = Store(path)
    for i in range(count):
        run_id = f"{worker}-{i}"
        store.put(
            {
                "run_id": run_id,
                "config_hash": run_id,
                "code_version": "x",
                "defense": "sft",
                "attack": "a",
                "seed": i,
                "model": "m",
                "judge": "j",
                "split": "eval",
                "versions": {},
                "data": "d",
                "data_hashes": {},
                "attack_config": {},
                "defense_config": {},
            },
            {},
        )


@pytest.mark.integration
def test_three_writers_lose_nothing(tmp_path):
    path = tmp_path / "w.db"
    Store(path)
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 1000)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(_rows(path)) == 3000
    assert (
        json.loads(sqlite3.connect(path).execute("SELECT result FROM runs LIMIT 1").fetchone()[0])["defense"] == "sft"
    )


@pytest.mark.integration
def test_editing_one_defense_recomputes_its_rows_and_only_those(tiny, tmp_path):
    import shutil

    import immunity

    source = tmp_path / "src"
    shutil.copytree(Path(immunity.__file__).parent, source / "immunity")
    env = _env(PYTHONPATH=str(source))
    args = [
        "bench",
        "--defenses",
        "sft,booster",
        "--seeds",
        "0",
        "--store",
        str(tmp_path / "s.db"),
        "--quiet",
        *tiny,
        "defense.epochs=0.02",
    ]
    first = _immunity(*args, env=env)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    before = dict(_rows(tmp_path / "s.db"))
    booster = source / "immunity" / "defenses" / "booster.py"
    booster.write_text(booster.read_text() + "\nEDITED = True  # a change to the code, not a comment\n")
    second = _immunity(*args, env=env)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert "2 runs, 1 already stored, 1 to run" in err and "booster" in err.split("to run")[1]
    after = dict(_rows(tmp_path / "s.db"))
    assert len(after) == 3 and set(before) < set(after)  # the old booster row stays, marked stale by report
    report = _immunity("report", "--store", str(tmp_path / "s.db"), env=env)
    out, err = report.communicate(timeout=120)
    assert report.returncode == 0 and out.count("| booster") == 1 and "older rows" in err


@pytest.mark.integration
def test_local_workers_share_a_grid_and_a_rerun_computes_nothing(tiny, tmp_path):
    store = tmp_path / "w.db"
    args = [
        "bench",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.1",
        "--store",
        str(store),
        "--quiet",
        "--workers",
        "2",
        *tiny,
    ]
    proc = _immunity(*args, env=_env())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    computed = [line for line in err.splitlines() if line.startswith("[")]
    assert len(_rows(store)) == 2 and len(computed) == 2, err
    proc = _immunity(*args, env=_env())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "2 already stored, 0 to run" in err


@pytest.mark.integration
def test_the_submitit_launcher_fills_the_store_from_result_files(tiny, tmp_path):
    """`--launcher slurm`'s code path with submitit's local executor: each job writes its
    result.json next to its generations, the coordinator merges them; a rerun computes nothing."""
    pytest.importorskip("submitit")
    store = tmp_path / "s.db"
    args = [
        "bench",
        "--launcher",
        "submitit-local",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0.1",
        "--store",
        str(store),
        "--quiet",
        "--slurm-option",
        "timeout_min=20",
        *tiny,
    ]
    proc = _immunity(*args, env=_env(), cwd=tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    files = sorted(tmp_path.glob("runs/sft-seed0-*/result.json"))
    assert len(files) == 1 and all(list(f.parent.glob("generations_*.jsonl")) for f in files)
    stored = {json.loads(f.read_text())["result"]["run_id"] for f in files}
    assert {row[0] for row in _rows(store)} == stored
    proc = _immunity(*args, env=_env(), cwd=tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "1 already stored, 0 to run" in err


def test_the_ray_launcher_fills_the_store(tiny, tmp_path):
    """Ray tasks on a local Ray instance (the optional extra `ray`; skipped without it)."""
    pytest.importorskip("ray")
    store = tmp_path / "ray.db"
    proc = _immunity(
        "bench",
        "--launcher",
        "ray",
        "--workers",
        "2",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.1",
        "--store",
        str(store),
        "--quiet",
        *tiny,
        env=_env(),
        cwd=tmp_path,
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(_rows(store)) == 2 and len(list(tmp_path.glob("runs/sft-seed0-*/result.json"))) == 2


@pytest.mark.integration
def test_a_result_file_left_by_an_interrupted_grid_is_merged_not_recomputed(tiny, tmp_path):
    from immunity.config import load_run_config
    from immunity.grid.launch import compute

    store = tmp_path / "r.db"
    compute(load_run_config(None, tiny + ["attack.p=0"], defense="sft", seed=0), threads=1)  # a worker, no store
    proc = _immunity(
        "bench",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.1",
        "--store",
        str(store),
        "--quiet",
        *tiny,
        env=_env(),
        cwd=tmp_path,
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "2 runs, 1 already stored, 1 to run" in err
    assert len(_rows(store)) == 2


def test_a_hub_name_that_cannot_be_reached_is_one_line(capsys):
    assert cli.main(["run", "model=no-such-org-immunity/no-such-model"]) == 2
    line = _error_line(capsys)
    assert "not a local directory" in line


@pytest.mark.integration
def test_a_killed_coordinators_local_workers_end_with_it(tmp_path):
    """kill -9 on a process that holds a local worker pool: its workers (which would go on
    computing runs nobody merges) end too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "worker.pid"
    script = f"""
import os, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from immunity.grid.launch import _die_with_parent

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(
        1, mp_context=get_context("spawn"), initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pool.submit(work, {str(pids)!r}).result()
"""
    (tmp_path / "coordinator.py").write_text(script)  # a file: spawned workers re-import it
    coordinator = subprocess.Popen([sys.executable, str(tmp_path / "coordinator.py")])
    deadline = time.time() + 60
    while not pids.exists() or not pids.read_text():
        assert time.time() < deadline, "the worker never started"
        time.sleep(0.2)
    worker = int(pids.read_text())
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    deadline = time.time() + 20
    while True:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "the worker outlived its coordinator"
        time.sleep(0.2)


def test_a_worker_whose_coordinator_died_before_it_started_exits():
    """The parent-death signal is set after the worker's imports; a coordinator killed before
    then sends none, so the worker checks that its parent is still the coordinator."""
    import subprocess
    import sys

    orphan = "from immunity.grid.launch import _die_with_parent; _die_with_parent(coordinator=1)"
    proc = subprocess.run([sys.executable, "-c", orphan], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "coordinator of this worker is gone" in proc.stderr
    alive = "import os; from immunity.grid.launch import _die_with_parent; _die_with_parent(os.getppid())"
    assert subprocess.run([sys.executable, "-c", alive], timeout=120).returncode == 0


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of a process's children (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((int(stat.parent.name), (stat.parent / "cmdline").read_text().replace("\0", " ")))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.integration
def test_a_killed_worker_fails_its_run_alone_with_a_memory_message(tiny, tmp_path):
    store = tmp_path / "w.db"
    proc = _immunity(
        "bench",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.05,0.1",
        "--workers",
        "2",
        "--store",
        str(store),
        "--quiet",
        *tiny,
        env=_env(),
    )
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2:
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd]
        time.sleep(0.2)
    assert len(workers) == 2
    time.sleep(3.0)  # inside its first run
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    killed = [line for line in err.splitlines() if "killed (signal 9; likely out of memory at" in line]
    assert proc.returncode == 2 and len(killed) == 1, err
    assert "1 runs diverged or failed" in err and "Traceback" not in err
    assert len(_rows(store)) == 2  # the other runs landed


@pytest.mark.integration
def test_two_coordinators_on_one_grid_split_it(tiny, tmp_path):
    store = tmp_path / "s.db"
    args = [
        "bench",
        "--defenses",
        "sft",
        "--seeds",
        "0",
        "--grid",
        "attack.p=0,0.05,0.1,0.2",
        "--store",
        str(store),
        "--quiet",
        *tiny,
    ]
    first = _immunity(*args, env=_env())
    time.sleep(2.0)
    second = _immunity(*args, env=_env())
    (_, err_a), (_, err_b) = first.communicate(timeout=600), second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err_a + err_b
    computed = [[line for line in err.splitlines() if line.startswith("[")] for err in (err_a, err_b)]
    assert len(computed[0]) >= 1 and len(computed[1]) >= 1, computed  # both worked
    assert len(computed[0]) + len(computed[1]) == 4 and len(_rows(store)) == 4


OOM_RUN = """
import resource, sys
import torch
from immunity import cli
# torch imports a profiler module lazily at the first optimizer step; under the limit that import
# fails and torch logs its own traceback. Load it first: the test is about immunity's message.
with torch.autograd.profiler.record_function("warm-up"):
    pass
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
sys.exit(cli.main(["run", *sys.argv[1:], "world.model.hidden=2048", "--quiet"]))  # ~0.5 GB to train: over the limit
"""


@pytest.mark.integration
def test_running_out_of_memory_under_a_limit_is_one_line(tiny):
    proc = subprocess.run(
        [sys.executable, "-c", OOM_RUN, *tiny], capture_output=True, text=True, env=_env(), timeout=300
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("immunity: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("immunity: error: out of memory (")
