"""Results in SQLite: one row per run, keyed by its run id (resolved config, code version,
package versions), written in its own transaction.

Safe under crashes and concurrency: WAL journal and a busy timeout, so several `bench`
processes share one store; a *claim* table, so two workers never compute the same run; a result
is inserted once and never replaced. A claim is a lease: its holder renews it (`Heartbeat`)
while it computes, and a claim not renewed within `lease_seconds()` (or whose process on this
host is gone) is taken over, with a message, whatever host or reused process id it names.
Schema version 3 (claims gained their heartbeat); older stores are migrated in place (a
version-1 store, keyed by config alone, keeps its rows with an unknown code version, so they
read as stale); a store written by a newer immunity is refused, never rewritten.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from ..engine.result import ResultError, RunResult
from ..outputs import process_alive

SCHEMA_VERSION = 3
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
    since TEXT NOT NULL,
    heartbeat REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(ValueError):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat()


def lease_seconds() -> float:
    """How long a claim lives without a heartbeat (IMMUNITY_CLAIM_LEASE, default 300 s); its
    holder renews it four times per lease."""
    return float(os.environ.get("IMMUNITY_CLAIM_LEASE", 300))


def _holder_alive(host: str, pid: int, heartbeat: float) -> bool:
    """A claim holds while its lease is fresh, and (on this host) while its process exists: a
    dead or vanished holder, on any host, lets its claim go within one lease."""
    if time.time() - heartbeat > lease_seconds():
        return False
    return host != socket.gethostname() or process_alive(pid)


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
            found = (
                self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if "meta" in tables
                else None
            )
            if found is not None and int(found[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer immunity (store schema {found[0]}, this "
                    f"version reads up to {SCHEMA_VERSION}): upgrade immunity to use it"
                )
            columns = [r[1] for r in self.conn.execute("PRAGMA table_info(runs)")] if "runs" in tables else []
            if columns and "run_id" not in columns:  # version 1: keyed by config alone
                self.conn.execute("ALTER TABLE runs RENAME TO runs_v1")
                self._create()
                self.conn.execute(
                    "INSERT INTO runs SELECT 'v1-' || config_hash, config_hash, 'unknown', created, defense, attack, "
                    "seed, model, judge, split, config, versions, result FROM runs_v1"
                )
                self.conn.execute("DROP TABLE runs_v1")
            else:
                self._create()
            claim_columns = [r[1] for r in self.conn.execute("PRAGMA table_info(claims)")]
            if "heartbeat" not in claim_columns:  # version 2: claims without a lease
                self.conn.execute("ALTER TABLE claims ADD COLUMN heartbeat REAL NOT NULL DEFAULT 0")
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
                (
                    result["run_id"],
                    result["config_hash"],
                    result["code_version"],
                    _now(),
                    result["defense"],
                    result["attack"],
                    result["seed"],
                    result["model"],
                    result["judge"],
                    result["split"],
                    json.dumps(config, default=str),
                    json.dumps(result["versions"]),
                    json.dumps(result, default=str),
                ),
            )
            self.conn.execute("DELETE FROM claims WHERE run_id = ?", (result["run_id"],))
            return cursor.rowcount == 1

    def results(self) -> list[dict]:
        """Every stored result as a dict; a damaged store or row is one StoreError naming the file
        (and the row)."""
        try:
            rows = self.conn.execute("SELECT run_id, result, config, created FROM runs ORDER BY created").fetchall()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is damaged ({err}); restore it from a copy or start a new store") from err
        found = []
        for run_id, result, config, created in rows:
            try:
                found.append(json.loads(result) | {"config": json.loads(config), "created": created})
            except (TypeError, json.JSONDecodeError) as err:
                raise StoreError(
                    f"{self.path}: row {run_id} is malformed ({err}); delete it or restore the store from a copy"
                ) from err
        return found

    def rows(self) -> list[RunResult]:
        """Every stored result, typed (oldest first)."""
        typed = []
        for result in self.results():
            try:
                typed.append(RunResult.from_dict(result))
            except (ResultError, KeyError, TypeError, ValueError) as err:
                raise StoreError(
                    f"{self.path}: row {result.get('run_id', '?')} is malformed ({err}); delete it or "
                    "restore the store from a copy"
                ) from err
        return typed

    # -- claims ------------------------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Claim a run for this process: False if it is stored or a live holder's lease on it is
        fresh. A stale claim is taken over, with a line on stderr."""
        host, pid = socket.gethostname(), os.getpid()
        with self._transaction():
            if self.has(run_id):
                return False
            row = self.conn.execute("SELECT host, pid, heartbeat FROM claims WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and (row[0], row[1]) != (host, pid):
                if _holder_alive(*row):
                    return False
                print(
                    f"immunity: taking over run {run_id} from {row[0]}:{row[1]} (no heartbeat for "
                    f"{time.time() - row[2]:.0f} s, or its process is gone)",
                    file=sys.stderr,
                    flush=True,
                )
            self.conn.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)", (run_id, host, pid, _now(), time.time())
            )
            return True

    def renew(self) -> None:
        """Renew every claim this process holds (its heartbeat)."""
        with self._transaction():
            self.conn.execute(
                "UPDATE claims SET heartbeat = ? WHERE host = ? AND pid = ?",
                (time.time(), socket.gethostname(), os.getpid()),
            )

    def release(self, run_id: str) -> None:
        with self._transaction():
            self.conn.execute(
                "DELETE FROM claims WHERE run_id = ? AND host = ? AND pid = ?",
                (run_id, socket.gethostname(), os.getpid()),
            )

    def claimed_by_other(self, run_id: str) -> bool:
        row = self.conn.execute("SELECT host, pid, heartbeat FROM claims WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None and (row[0], row[1]) != (socket.gethostname(), os.getpid()) and _holder_alive(*row)

    def close(self) -> None:
        self.conn.close()


class Heartbeat:
    """While the block runs, a thread renews this process's claims on the store at `path` four
    times per lease (its own connection: SQLite connections stay in their thread)."""

    def __init__(self, path: str | Path):
        self.path, self.stop = Path(path), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="immunity-heartbeat")

    def _beat(self) -> None:
        store = Store(self.path, create=False)
        try:
            while not self.stop.wait(lease_seconds() / 4):
                store.renew()
        finally:
            store.close()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
