"""Results in SQLite: one row per run, keyed by its config hash, written in a transaction."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    config_hash TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    seed INTEGER NOT NULL,
    model TEXT NOT NULL,
    judge TEXT NOT NULL,
    split TEXT NOT NULL,
    config TEXT NOT NULL,
    versions TEXT NOT NULL,
    result TEXT NOT NULL
)
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        with self.conn:
            self.conn.execute(SCHEMA)

    def has(self, config_hash: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM runs WHERE config_hash = ?", (config_hash,)).fetchone()
        return row is not None

    def put(self, result: dict, config: dict) -> None:
        with self.conn:  # one transaction per result: an interrupted bench loses at most one run
            self.conn.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result["config_hash"], datetime.now(timezone.utc).isoformat(), result["defense"],
                 result["attack"], result["seed"], result["model"], result["judge"], result["split"],
                 json.dumps(config, default=str), json.dumps(result["versions"]),
                 json.dumps(result, default=str)))

    def results(self) -> list[dict]:
        rows = self.conn.execute("SELECT result, config FROM runs ORDER BY created").fetchall()
        return [json.loads(r) | {"config": json.loads(c)} for r, c in rows]

    def close(self) -> None:
        self.conn.close()
