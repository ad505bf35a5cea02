"""Released results: what every published table is made from, committed with the code.

`export` writes, from a results store and the runs' saved generations, into `results/release/`:
- `NAME.rows.jsonl.gz`: every stored row (the typed result and its resolved config), sorted by
  run id;
- `NAME.generations.jsonl.gz`: per run and prompt, the answer before and after the attack and the
  judge's verdict (what `report --paired` reads), under the release policy below;
- `MANIFEST.json`: per file its bytes, SHA-256, the command that made it, the code version of the
  rows in it and the data version.

Files are gzip with a fixed timestamp and sorted content, so the same rows give the same bytes.
`load_rows` reads a release back as typed rows, offline, in seconds.

Release policy (as HarmBench and HELM release their completions): SafetyWorld's generations are
released in full (a made-up world: its "harmful" answers name invented objects and cannot help
anyone). On a real track, answers to benign requests are released in full; answers to harmful
requests are cut to their first `REAL_HARMFUL_WORDS` words (enough to see a refusal or a
compliance, not enough to use), while every verdict, NLL and metric is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

from ..engine.result import RunResult
from ..evaluation.suite import _record_key, verdict_path
from ..grid.store import Store
from ..outputs import write_text_atomic

RELEASE = Path("results/release")
REAL_HARMFUL_WORDS = 12
DATA_VERSION = "2026.12.08.2"  # raised whenever released rows are added or replaced


def _gzip_lines(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:  # mtime 0: the same rows, the same bytes
        f.write("".join(line + "\n" for line in lines).encode())
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _generations(result: dict, runs: Path, real: bool) -> list[dict]:
    """A run's per-prompt records (answer, verdict) before and after the attack, under the policy."""
    matches = sorted(runs.glob(f"*-{result['run_id']}"))
    if not matches:
        return []
    out = []
    for when in ("before", "after"):
        path = matches[0] / f"generations_{when}.jsonl"
        if not path.is_file():
            continue
        verdicts_file = verdict_path(path, result["judge"])
        verdicts = {}
        if verdicts_file.is_file():
            for line in verdicts_file.read_text().splitlines():
                row = json.loads(line)
                verdicts[row["key"]] = row["verdict"]
        for line in path.read_text().splitlines():
            record = json.loads(line)
            response = record["response"]
            if real and record.get("kind") == "harmful":
                response = " ".join(response.split()[:REAL_HARMFUL_WORDS])
            out.append(
                {
                    "run_id": result["run_id"],
                    "when": when,
                    "set": record["set"],
                    "kind": record.get("kind"),
                    "prompt": record["prompt"],
                    "response": response,
                    "verdict": verdicts.get(_record_key(record)),
                }
            )
    return out


def export(
    store: str | Path,
    name: str,
    runs: str | Path = "runs",
    out: str | Path = RELEASE,
    command: str = "",
    real: bool = False,
) -> dict:
    """Export the store's rows and their generations as release `name`; the manifest entry."""
    results = sorted(Store(store, create=False).results(), key=lambda r: r["run_id"])
    rows = [json.dumps(r, sort_keys=True, default=str) for r in results]
    generations = [json.dumps(g, sort_keys=True) for r in results for g in _generations(r, Path(runs), real)]
    out = Path(out)
    entries = {
        f"{name}.rows.jsonl.gz": _write(out / f"{name}.rows.jsonl.gz", _gzip_lines(rows)),
        f"{name}.generations.jsonl.gz": _write(out / f"{name}.generations.jsonl.gz", _gzip_lines(generations)),
    }
    code_versions = sorted({r["code_version"] for r in results})
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    for file, entry in entries.items():
        manifest["files"][file] = entry | {"command": command, "rows": len(rows), "code_versions": code_versions}
    manifest["data_version"] = DATA_VERSION
    manifest["files"] = dict(sorted(manifest["files"].items()))
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def add_file(path: str | Path, command: str, release: str | Path = RELEASE) -> dict:
    """Record a file already written under the release (a benchmark's JSON) in the manifest."""
    release, path = Path(release), Path(path)
    data = path.read_bytes()
    manifest_path = release / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest["files"][path.relative_to(release).as_posix()] = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "command": command,
    }
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest.setdefault("data_version", DATA_VERSION)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check(release: str | Path = RELEASE) -> list[str]:
    """The manifest's files whose bytes or SHA-256 do not match (empty: the release is intact)."""
    release = Path(release)
    manifest = json.loads((release / "MANIFEST.json").read_text())
    bad = []
    for file, entry in manifest["files"].items():
        path = release / file
        data = path.read_bytes() if path.is_file() else b""
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            bad.append(file)
    return bad


def load_rows(name: str, release: str | Path = RELEASE) -> list[RunResult]:
    """The released rows of `name` as typed rows."""
    path = Path(release) / f"{name}.rows.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [RunResult.from_dict(json.loads(line)) for line in f if line.strip()]


def load_generations(name: str, release: str | Path = RELEASE) -> list[dict]:
    path = Path(release) / f"{name}.generations.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
