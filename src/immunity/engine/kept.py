"""The released model's evaluation, kept beside its cache entry: every attack on one release
meets the same model before the attack, so its generations, verdicts and metrics are computed
once and copied into each run's directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..cache import stable_hash
from ..outputs import write_text_atomic


def entry(release: Path, prompts: dict, eval_config, judge_name: str, data_hashes: dict, code: str) -> Path:
    """Where the release's evaluation on these prompts, by this judge and its settings, under this
    generation length and batch and this code, is kept."""
    e = eval_config
    key = stable_hash(
        [
            {k: [x.prompt for x in v] for k, v in prompts.items()},
            e.max_new_tokens,
            e.batch_size,
            judge_name,
            e.judge_settings(),
            e.split,
            data_hashes,
            code,
        ]
    )
    return release.with_name(release.name + ".eval") / f"eval-{key}.jsonl"


def reuse(kept: Path, path: Path) -> dict | None:
    """The kept metrics, with the generation and verdict files copied to `path`'s names; None if
    nothing is kept yet."""
    if not kept.with_suffix(".json").is_file():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    for file in kept.parent.glob(f"{kept.stem}*.jsonl"):
        shutil.copyfile(file, path.with_name(file.name.replace(kept.stem, path.stem)))
    return json.loads(kept.with_suffix(".json").read_text())


def keep(kept: Path, path: Path, metrics: dict) -> None:
    """Keep the files written at `path` and the metrics (written last and atomically: a reader
    sees all of it or nothing)."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    for file in path.parent.glob(f"{path.stem}*.jsonl"):
        shutil.copyfile(file, kept.with_name(file.name.replace(path.stem, kept.stem)))
    write_text_atomic(kept.with_suffix(".json"), json.dumps(metrics))
