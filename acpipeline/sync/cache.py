"""Derived blobs cached by content, so an unchanged source is never fetched or derived twice: an index from a
source key to what was derived from it, and the blob bytes in files named by their CID.

Under ACPIPELINE_HOME (the default) the index is SQLite, safe across the processes of one machine. With
`ACPIPELINE_CACHE_DIR` (a volume every run container mounts: NFS, EFS, a Kubernetes ReadWriteMany volume) the
cache of ACPIPELINE_HOME lives there instead, and its index is one small JSON file per key, written whole
and renamed into place: no SQLite (its locks and WAL do not work over network filesystems), and no file is
ever changed in place, so machines see each other's entries, and one tape is encoded once for all."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acpipeline.core.cid import blob_cid
from acpipeline.core.items import Blob
from acpipeline.resources.shared_state import cache_dir
from acpipeline.settings import acpipeline_home


def connect_local(path: Path, schema: str, **options: Any) -> sqlite3.Connection:
    """A connection to one of our SQLite files under ACPIPELINE_HOME, in WAL mode with `schema` (one or more
    statements, run whole each time: they must be idempotent) in place.

    Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does not wait for, so
    partition runs starting together in several processes would fail with "database is locked": the
    first use is serialised with a file lock."""
    db: sqlite3.Connection = sqlite3.connect(path, timeout=30, **options)  # no `factory` among the options
    # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits, which for a cache
    # and for convergence marks only means doing that work again. FULL syncs the disk on every commit.
    db.execute("PRAGMA synchronous=NORMAL")
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return db


class _SqliteIndex:
    """The index under ACPIPELINE_HOME: one SQLite file, a connection per thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._db()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            schema = "CREATE TABLE IF NOT EXISTS derived(key TEXT PRIMARY KEY, value TEXT, at REAL)"
            db = self._local.db = connect_local(self._path, schema)
        return db

    def get(self, key: str) -> tuple[dict[str, Any], float] | None:
        row = self._db().execute("SELECT value, at FROM derived WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def put(self, entries: dict[str, dict[str, Any]], at: float) -> None:
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO derived VALUES (?, ?, ?)",
                [(key, json.dumps(value), at) for key, value in entries.items()],
            )


class _FileIndex:
    """The index on a shared volume: `index/ab/abcd….json` per key (its SHA-256), each written to a temporary
    name and renamed over the old one, so a reader sees a whole entry or none, on any filesystem."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self._folder / digest[:2] / f"{digest}.json"

    def get(self, key: str) -> tuple[dict[str, Any], float] | None:
        try:
            entry = json.loads(self._path(key).read_bytes())
            if entry["key"] != key:  # another key with the same digest: as good as none
                return None
            return entry["value"], float(entry["at"])
        except (OSError, ValueError, KeyError, TypeError):  # none, or not ours: derived again
            return None

    def put(self, entries: dict[str, dict[str, Any]], at: float) -> None:
        for key, value in entries.items():
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            _write_new(path, json.dumps({"key": key, "at": at, "value": value}).encode())


def _write_new(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all. The temporary name is random: on a shared volume the other
    writers are other machines, with the same process and thread ids as likely as not (a container's run is
    often pid 1)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class DerivedCache:
    """The cache under `home`; for ACPIPELINE_HOME's, in `ACPIPELINE_CACHE_DIR` instead when that is set
    (a folder passed explicitly, as the benchmark does for a cold cache, is used as it is)."""

    # Writers of one process take turns here rather than in SQLite, whose busy handler sleeps 1-25 ms per
    # retry: eight threads storing thumbnails spent seconds asleep.
    _write_lock = threading.Lock()

    def __init__(self, home: Path) -> None:
        shared = cache_dir() if home.resolve() == acpipeline_home() else None
        root = shared or home
        self.blob_dir = root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._index: _SqliteIndex | _FileIndex
        self._index = _FileIndex(root / "index") if shared else _SqliteIndex(root / "derived.sqlite")
        self._pending: dict[str, dict[str, Any]] | None = None  # puts held back by `deferred`

    def get(self, key: str, max_age_s: float | None = None) -> dict[str, Any] | None:
        pending = self._pending
        if pending is not None and key in pending:
            return pending[key]
        found = self._index.get(key)
        if found is None or (max_age_s is not None and time.time() - found[1] > max_age_s):
            return None
        return found[0]

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._write_lock:
            if self._pending is not None:
                self._pending[key] = value
                return
            self._index.put({key: value}, time.time())

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
                self._index.put(pending, time.time())

    def store_blob(self, data: bytes, mime_type: str) -> Blob:
        cid = blob_cid(data)
        path = self.blob_dir / cid
        if not path.exists():
            _write_new(path, data)
        return Blob(cid=cid, mime_type=mime_type, size=len(data), path=str(path))

    def blob(self, entry: dict[str, Any] | None) -> Blob | None:
        """A cached blob from its index entry, if its file is still there: in this cache's blob folder,
        whatever path the machine that stored it had (a shared volume may be mounted elsewhere)."""
        if not entry:
            return None
        blob = Blob(**entry)
        if "/" in blob.cid or blob.cid.startswith("."):
            return None
        path = self.blob_dir / blob.cid
        return Blob(blob.cid, blob.mime_type, blob.size, str(path)) if path.exists() else None
