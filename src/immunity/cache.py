"""On-disk cache of trained models, keyed by config and the code that produced them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def cache_root() -> Path:
    return Path(os.environ.get("IMMUNITY_CACHE", Path.home() / ".cache" / "immunity"))


def stable_hash(obj) -> str:
    if is_dataclass(obj):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version(*subpackages: str) -> str:
    """Hash of the source files a cached artefact depends on: edit them and the cache misses."""
    digest = hashlib.sha256()
    for sub in subpackages:
        path = PACKAGE_ROOT / sub
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:12]
