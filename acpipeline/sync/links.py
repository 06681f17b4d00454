"""The MongoDB link updates of a run (`atproto.*` on each synced document), gathered and written in a few
bulk writes instead of one per partition.

Why: the embedded store (litemongo) answers a query from an index of the whole collection, and rebuilds
that index (reading and decoding every document) whenever another process committed to the collection
since its last query. Four runs linking paintings at once made nearly every write-back a rebuild of all
8,936 painting documents: in a profile of the platform's full pass, 16% of all run CPU. Gathered, a run
links its partitions in a few bulk writes, each under a per-collection lock on this machine, so each
write rebuilds at most once. With a MongoDB server neither costs anything worth counting.

Whoever gathers links decides when its partitions count as done: only after `flush` (their records'
links are in MongoDB) may their convergence marks be written. Other threads may gather too; MongoDB is
written only from the thread that made the writer (the embedded store's connections belong to their
thread), which flushes what they gathered."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

FLUSH_AT = 2000  # gathered updates that trigger a write (a run of 250 painting partitions has ~1,700)


class LinkWriteFailed(Exception):
    """MongoDB refused the link updates of records the PDS already holds: the partitions fail (no convergence
    mark), and their next run finds the records by their keys and links them without writing again."""


class LinkWriter:
    """A run's MongoDB link updates, gathered from any thread and written in bulk per collection from the
    thread that made it; LinkWriteFailed when MongoDB refuses them."""

    def __init__(self, db: MongoDatabase, lock_dir: Path | None = None, flush_at: int = FLUSH_AT) -> None:
        """`lock_dir`: where the per-collection locks live (the embedded store); None, no lock."""
        self.db = db
        self.lock_dir = lock_dir
        self.flush_at = flush_at
        self.writes = 0  # bulk writes made
        self._ops: dict[str, list[UpdateOne]] = {}
        self._owner = threading.get_ident()
        self._gathering = threading.RLock()

    @property
    def pending(self) -> int:
        with self._gathering:
            return sum(len(ops) for ops in self._ops.values())

    def add(self, collection: str, ops: list[UpdateOne]) -> None:
        """Gather; written once `flush_at` updates are waiting (or at `flush`) by the writer's own thread."""
        with self._gathering:
            if ops:
                self._ops.setdefault(collection, []).extend(ops)
            if self.pending >= self.flush_at and threading.get_ident() == self._owner:
                self.flush()

    def flush(self) -> None:
        with self._gathering:
            self._flush()

    def _flush(self) -> None:
        while self._ops:
            collection, ops = next(iter(self._ops.items()))
            with self._lock(collection):
                try:
                    self.db[collection].bulk_write(ops, ordered=False)
                except PyMongoError as exc:
                    raise LinkWriteFailed(
                        f"MongoDB refused the links of {len(ops)} {collection} records the PDS now holds "
                        f"({type(exc).__name__}: {exc}); the next run links them without writing again"
                    ) from None
            self.writes += 1
            del self._ops[collection]

    @contextlib.contextmanager
    def _lock(self, collection: str) -> Iterator[None]:
        if self.lock_dir is None:
            yield
            return
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f"mongo-{collection}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
