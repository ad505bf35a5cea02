"""Results in SQLite: one row per run, keyed by its run id (resolved config, code version,
package versions), written in its own transaction.

Safe under crashes and concurrency: WAL journal and a busy timeout, so several `bench`
processes share one store; a *claim* table, so two workers never compute the same run (a
claim whose process died is taken over); a result is inserted once and never replaced.
Schema version 2; a version-1 store (keyed by config alone) is migrated in place, its rows kept
with an unknown code version, so they read as stale.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from .result import RunResult

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL,
    code_version TEXT NOT NULL,
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
);
CREATE INDEX IF NOT EXISTS runs_by_config ON runs(config_hash);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(ValueError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another machine's worker: assume it is still working
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the results store's directory {self.path.parent}: {err}") from err
        try:
            self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a usable results store: {err}") from err

    # -- schema ------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._transaction():
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = [r[1] for r in self.conn.execute("PRAGMA table_info(runs)")] if "runs" in tables else []
            if columns and "run_id" not in columns:  # version 1: keyed by config alone
                self.conn.execute("ALTER TABLE runs RENAME TO runs_v1")
                self._create()
                self.conn.execute(
                    "INSERT INTO runs SELECT 'v1-' || config_hash, config_hash, 'unknown', created, defense, attack, "
                    "seed, model, judge, split, config, versions, result FROM runs_v1")
                self.conn.execute("DROP TABLE runs_v1")
            else:
                self._create()
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _create(self) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.conn.execute(statement)

    def _transaction(self):
        conn = self.conn

        class _Tx:
            def __enter__(self):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, tb):
                conn.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    # -- results -----------------------------------------------------------------------------
    def has(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def put(self, result: dict, config: dict) -> bool:
        """Store `result` (checked as a typed row first: a malformed result is an error, never a
        row) unless its run is already stored (then keep the first); release the run's claim in
        the same transaction. Returns whether a row was written."""
        RunResult.from_dict(result).check()
        with self._transaction():
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result["run_id"], result["config_hash"], result["code_version"], _now(), result["defense"],
                 result["attack"], result["seed"], result["model"], result["judge"], result["split"],
                 json.dumps(config, default=str), json.dumps(result["versions"]), json.dumps(result, default=str)))
            self.conn.execute("DELETE FROM claims WHERE run_id = ?", (result["run_id"],))
            return cursor.rowcount == 1

    def rows(self) -> list[RunResult]:
        """Every stored result, typed (oldest first)."""
        return [RunResult.from_dict(r) for r in self.results()]

    def results(self) -> list[dict]:
        rows = self.conn.execute("SELECT result, config, created FROM runs ORDER BY created").fetchall()
        return [json.loads(r) | {"config": json.loads(c), "created": t} for r, c, t in rows]

    # -- claims ------------------------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Claim a run for this process: False if it is stored or a live worker holds it."""
        host, pid = socket.gethostname(), os.getpid()
        with self._transaction():
            if self.has(run_id):
                return False
            row = self.conn.execute("SELECT host, pid FROM claims WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and (row[0], row[1]) != (host, pid) and _alive(row[0], row[1]):
                return False
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (run_id, host, pid, _now()))
            return True

    def release(self, run_id: str) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM claims WHERE run_id = ? AND host = ? AND pid = ?",
                              (run_id, socket.gethostname(), os.getpid()))

    def claimed_by_other(self, run_id: str) -> bool:
        row = self.conn.execute("SELECT host, pid FROM claims WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None and (row[0], row[1]) != (socket.gethostname(), os.getpid()) and _alive(*row)

    def close(self) -> None:
        self.conn.close()
