"""Derived blobs cached by content under ACPIPELINE_HOME, so an unchanged source is never fetched or
derived twice: an index (SQLite, safe across processes) from a source key to what was derived from it, and
the blob bytes in files named by their CID."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from acpipeline.core.cid import blob_cid
from acpipeline.core.items import Blob


class DerivedCache:
    def __init__(self, home: Path):
        self.blob_dir = home / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._path = home / "derived.sqlite"
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS derived(key TEXT PRIMARY KEY, value TEXT, at REAL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def get(self, key: str, max_age_s: float | None = None) -> dict[str, Any] | None:
        row = self._db().execute("SELECT value, at FROM derived WHERE key = ?", (key,)).fetchone()
        if row is None or (max_age_s is not None and time.time() - row[1] > max_age_s):
            return None
        return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO derived VALUES (?, ?, ?)", (key, json.dumps(value), time.time())
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
