"""Relay metadata: drops and their access logs, behind the small :class:`MetaStore` protocol.

:class:`SqliteMetaStore` keeps everything in one SQLite file (``data_dir/relay.sqlite3``, WAL,
``secure_delete``) and runs every statement on one worker thread, so the event loop never
blocks on the disk and each :meth:`MetaStore.apply` is atomic: it loads the drop, runs a pure
step of :class:`relay.store.Rules` on it and writes the result in one transaction, with no
other request in between. A PostgreSQL store would do the same with ``SELECT ... FOR UPDATE``.

Only digests of secrets are stored (SHA-256 hex of the auth key, the owner token and each
claim token), never the secrets.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from relay.store import Claim, Drop, Event, Kdf, LogEntry, Outcome, State, Write

__all__ = ["DB_NAME", "MetaStore", "SqliteMetaStore"]

DB_NAME: Final = "relay.sqlite3"
_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS drops (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    max_downloads INTEGER NOT NULL,
    downloads INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL,
    verifier TEXT NOT NULL,
    owner TEXT NOT NULL,
    kdf TEXT,
    claims TEXT NOT NULL,
    sweep_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS drops_sweep_at ON drops (sweep_at);
CREATE TABLE IF NOT EXISTS access_log (
    drop_id TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    address TEXT
);
CREATE INDEX IF NOT EXISTS access_log_drop ON access_log (drop_id);
"""
_COLUMNS: Final = (
    "id, state, size, stored, created_at, expires_at, max_downloads, downloads, "
    "failed_attempts, verifier, owner, kdf, claims, sweep_at"
)
_VALUES: Final = ", ".join("?" * len(_COLUMNS.split(",")))


class MetaStore(Protocol):
    """Where drops and access logs live. Every method may raise ``OSError`` or the driver's
    errors; the shim answers ``500 internal`` then."""

    async def insert(self, drop: Drop, events: Sequence[LogEntry]) -> None:
        """Store a new drop and its first events."""
        ...

    async def get(self, drop_id: str) -> Drop | None:
        """The drop, or ``None``."""
        ...

    async def apply(self, drop_id: str, step: Callable[[Drop | None], Outcome]) -> Outcome:
        """Atomically: load the drop, run ``step`` (pure, quick) on it, perform its
        :class:`~relay.store.Write` and append its events (with ``SAVE`` or ``KEEP``)."""
        ...

    async def log(self, drop_id: str) -> list[LogEntry]:
        """The drop's access log, oldest first."""
        ...

    async def due(self, now: float, limit: int = 1000) -> list[str]:
        """Ids of drops whose ``sweep_at`` is at or before ``now`` (see ``Rules.due``)."""
        ...

    async def live_ids(self) -> set[str]:
        """Ids of drops that should have a blob (uploading or available)."""
        ...

    async def reserved_bytes(self, now: float) -> int:
        """Bytes still expected for unexpired uploading drops (declared size minus stored)."""
        ...

    async def compact(self) -> None:
        """Make deletions final on disk (e.g. checkpoint and truncate a write-ahead log)."""
        ...

    async def close(self) -> None:
        """Release everything. Idempotent."""
        ...


class SqliteMetaStore:
    """:class:`MetaStore` in one SQLite file. Build it with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanbeam-meta")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteMetaStore:
        """Open (or create, mode 0600) the database file at ``path``."""
        store = cls(path)
        try:
            await store._run(store._open)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    # -- MetaStore ---------------------------------------------------------------------------------

    async def insert(self, drop: Drop, events: Sequence[LogEntry]) -> None:
        await self._run(self._insert, drop, tuple(events))

    async def get(self, drop_id: str) -> Drop | None:
        return await self._run(self._load, drop_id)

    async def apply(self, drop_id: str, step: Callable[[Drop | None], Outcome]) -> Outcome:
        return await self._run(self._apply, drop_id, step)

    async def log(self, drop_id: str) -> list[LogEntry]:
        return await self._run(self._log, drop_id)

    async def due(self, now: float, limit: int = 1000) -> list[str]:
        return await self._run(self._due, now, limit)

    async def live_ids(self) -> set[str]:
        return await self._run(self._live_ids)

    async def reserved_bytes(self, now: float) -> int:
        return await self._run(self._reserved, now)

    async def compact(self) -> None:
        await self._run(self._compact)

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self._run(self._close)
            finally:
                self._executor.shutdown(wait=False)

    # -- on the worker thread ----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the metadata store is closed")
        return self._db

    def _open(self) -> None:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # WAL/SHM inherit the mode
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left behind
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()

    def _insert(self, drop: Drop, events: tuple[LogEntry, ...]) -> None:
        db = self._conn()
        with _transaction(db):
            db.execute(
                f"INSERT INTO drops ({_COLUMNS}) VALUES ({_VALUES})",
                _row(drop),
            )
            self._append(db, drop.id, events)

    def _load(self, drop_id: str) -> Drop | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM drops WHERE id = ?", (drop_id,))
        found = row.fetchone()
        return None if found is None else _drop(found)

    def _apply(self, drop_id: str, step: Callable[[Drop | None], Outcome]) -> Outcome:
        db = self._conn()
        with _transaction(db):
            outcome = step(self._load(drop_id))
            if outcome.write is Write.PURGE:
                db.execute("DELETE FROM drops WHERE id = ?", (drop_id,))
                db.execute("DELETE FROM access_log WHERE drop_id = ?", (drop_id,))
            elif outcome.write in (Write.SAVE, Write.CLEAR):
                assert outcome.drop is not None and outcome.drop.id == drop_id
                db.execute(
                    f"INSERT OR REPLACE INTO drops ({_COLUMNS}) VALUES ({_VALUES})",
                    _row(outcome.drop),
                )
                if outcome.write is Write.CLEAR:
                    db.execute("DELETE FROM access_log WHERE drop_id = ?", (drop_id,))
            if outcome.write in (Write.SAVE, Write.KEEP) and outcome.drop is not None:
                self._append(db, drop_id, outcome.events)
        return outcome

    @staticmethod
    def _append(db: sqlite3.Connection, drop_id: str, events: Sequence[LogEntry]) -> None:
        db.executemany(
            "INSERT INTO access_log (drop_id, time, event, address) VALUES (?,?,?,?)",
            [(drop_id, e.time, e.event.value, e.address) for e in events],
        )

    def _log(self, drop_id: str) -> list[LogEntry]:
        rows = self._conn().execute(
            "SELECT time, event, address FROM access_log WHERE drop_id = ? ORDER BY rowid",
            (drop_id,),
        )
        return [LogEntry(float(t), Event(e), a) for t, e, a in rows]

    def _due(self, now: float, limit: int) -> list[str]:
        rows = self._conn().execute(
            "SELECT id FROM drops WHERE sweep_at <= ? ORDER BY sweep_at LIMIT ?",
            (now, limit),
        )
        return [r[0] for r in rows]

    def _live_ids(self) -> set[str]:
        rows = self._conn().execute(
            "SELECT id FROM drops WHERE state IN (?, ?)",
            (State.UPLOADING.value, State.AVAILABLE.value),
        )
        return {r[0] for r in rows}

    def _reserved(self, now: float) -> int:
        row = self._conn().execute(
            "SELECT COALESCE(SUM(MAX(size - stored, 0)), 0) FROM drops "
            "WHERE state = ? AND expires_at > ?",
            (State.UPLOADING.value, now),
        )
        return int(row.fetchone()[0])

    def _compact(self) -> None:
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _row(drop: Drop) -> tuple[object, ...]:
    return (
        drop.id,
        drop.state.value,
        drop.size,
        drop.stored,
        drop.created_at,
        drop.expires_at,
        drop.max_downloads,
        drop.downloads,
        drop.failed_attempts,
        drop.verifier,
        drop.owner,
        None if drop.kdf is None else json.dumps(drop.kdf.to_json()),
        json.dumps([[c.digest, c.last_used] for c in drop.claims]),
        drop.sweep_at,
    )


def _drop(row: Sequence[Any]) -> Drop:
    kdf = None if row[11] is None else Kdf(**json.loads(row[11]))
    return Drop(
        id=row[0],
        state=State(row[1]),
        size=int(row[2]),
        stored=int(row[3]),
        created_at=float(row[4]),
        expires_at=float(row[5]),
        max_downloads=int(row[6]),
        downloads=int(row[7]),
        failed_attempts=int(row[8]),
        verifier=row[9],
        owner=row[10],
        kdf=kdf,
        claims=tuple(Claim(d, float(t)) for d, t in json.loads(row[12])),
        sweep_at=float(row[13]),
    )
