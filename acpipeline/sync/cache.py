"""Derived blobs cached by content under ACPIPELINE_HOME, so an unchanged source is never fetched or
derived twice: an index (SQLite, safe across processes) from a source key to what was derived from it, and
the blob bytes in files named by their CID."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acpipeline.core.cid import blob_cid
from acpipeline.core.items import Blob


def connect_local(path: Path, schema: str, **options: Any) -> sqlite3.Connection:
    """A connection to one of our SQLite files under ACPIPELINE_HOME, in WAL mode with `schema` in place.

    Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does not wait for, so
    partition runs starting together in several processes would fail with "database is locked": the
    first use is serialised with a file lock."""
    db = sqlite3.connect(path, timeout=30, **options)
    # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits, which for a cache
    # and for convergence marks only means doing that work again. FULL syncs the disk on every commit.
    db.execute("PRAGMA synchronous=NORMAL")
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(schema)
            if db.in_transaction:
                db.commit()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return db


class DerivedCache:
    # Writers of one process take turns here rather than in SQLite, whose busy handler sleeps 1-25 ms per
    # retry: eight threads storing thumbnails spent seconds asleep.
    _write_lock = threading.Lock()

    def __init__(self, home: Path):
        self.blob_dir = home / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._path = home / "derived.sqlite"
        self._local = threading.local()
        self._pending: dict[str, dict[str, Any]] | None = None  # puts held back by `deferred`
        self._db()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            schema = "CREATE TABLE IF NOT EXISTS derived(key TEXT PRIMARY KEY, value TEXT, at REAL)"
            db = self._local.db = connect_local(self._path, schema)
        return db

    def get(self, key: str, max_age_s: float | None = None) -> dict[str, Any] | None:
        pending = self._pending
        if pending is not None and key in pending:
            return pending[key]
        row = self._db().execute("SELECT value, at FROM derived WHERE key = ?", (key,)).fetchone()
        if row is None or (max_age_s is not None and time.time() - row[1] > max_age_s):
            return None
        return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._write_lock:
            if self._pending is not None:
                self._pending[key] = value
                return
            with self._db() as db:
                db.execute(
                    "INSERT OR REPLACE INTO derived VALUES (?, ?, ?)", (key, json.dumps(value), time.time())
                )

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Puts inside are written in one transaction at the end (also when it raises), instead of a
        commit each: two per painting, 8% of a painting run's samples. A crash loses them, and with them
        only work the next run redoes."""
        with self._write_lock:
            self._pending = {}
        try:
            yield
        finally:
            with self._write_lock:
                pending, self._pending = self._pending or {}, None
                now = time.time()
                with self._db() as db:
                    db.executemany(
                        "INSERT OR REPLACE INTO derived VALUES (?, ?, ?)",
                        [(key, json.dumps(value), now) for key, value in pending.items()],
                    )

    def store_blob(self, data: bytes, mime_type: str) -> Blob:
        cid = blob_cid(data)
        path = self.blob_dir / cid
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Blob(cid=cid, mime_type=mime_type, size=len(data), path=str(path))

    def blob(self, entry: dict[str, Any] | None) -> Blob | None:
        """A cached blob from its index entry, if its file is still there."""
        if not entry:
            return None
        blob = Blob(**entry)
        return blob if Path(blob.path).exists() else None
