"""Convergence marks: per account, the repository revision its marks hold at, and per media type the source
fingerprint its last clean sync synced (`Mark`). Kept in SQLite under `ACPIPELINE_HOME`, or in MongoDB with
`ACPIPELINE_SHARED_STATE=mongodb` (every machine sees the same marks); `converged.py` proves with them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pymongo.errors import DuplicateKeyError

from acpipeline.resources import shared_state
from acpipeline.sync.cache import connect_local

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoCollection

MARK_UPDATE_TRIES = 50  # concurrent changes to one account's marks in MongoDB: each try reads it again


@dataclass(frozen=True)
class Mark:
    """What a partition's last clean sync saw (its source fingerprint, the records it held), so a later run
    can prove it converged."""

    fingerprint: str
    desired: int  # records the partition held when it was marked
    not_in_mongodb: int = 0  # records it kept then that stand for no MongoDB document


def _marks_collection() -> MongoCollection:
    # Looked up at each use: a state is used from more than one thread, and the embedded store's
    # connections belong to their thread.
    return shared_state.collection(shared_state.MARKS)


def _marks_of(stored: dict[str, Any]) -> dict[str, Mark]:
    return {media: Mark(*value) for media, value in stored.items()}


def _plain_marks(marks: dict[str, Mark]) -> dict[str, list[Any]]:
    return {media: [mark.fingerprint, mark.desired, mark.not_in_mongodb] for media, mark in marks.items()}


# A change of an account's (rev, marks): the new ones, or None to leave them as they are.
_Change: TypeAlias = Callable[[str | None, dict[str, Mark]], tuple[str | None, dict[str, Mark]] | None]


class ConvergedState:
    """Per account: a repository rev and the marks valid at it. Each change is one atomic update, so
    concurrent runs cannot interleave inside one. Kept in SQLite under ACPIPELINE_HOME (every process of
    this machine), or with `ACPIPELINE_SHARED_STATE=mongodb` in MongoDB's `acpipeline-marks`, one document
    per account (every machine: runs in containers with an empty ACPIPELINE_HOME prove from the marks other
    machines made)."""

    def __init__(self, home: Path) -> None:
        self._db: sqlite3.Connection | None = None
        self._shared = shared_state.in_mongodb()
        if self._shared:
            return
        schema = "CREATE TABLE IF NOT EXISTS marks(did TEXT PRIMARY KEY, rev TEXT, marks TEXT)"
        # Used by a run's thread that sends applyWrites too (advance), never at the same time as the other.
        self._db = connect_local(
            home / "converged.sqlite", schema, isolation_level=None, check_same_thread=False
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def load(self, did: str) -> tuple[str | None, dict[str, Mark]]:
        return self.load_many([did]).get(did, (None, {}))

    def load_many(self, dids: Iterable[str]) -> dict[str, tuple[str, dict[str, Mark]]]:
        """The stored rev and marks of each of the accounts that has any: one query per 500 accounts."""
        wanted = list(dict.fromkeys(dids))
        found: dict[str, tuple[str, dict[str, Mark]]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            if self._shared:
                for doc in _marks_collection().find({"_id": {"$in": chunk}}):
                    found[doc["_id"]] = (doc["rev"], _marks_of(doc["marks"]))
                continue
            assert self._db is not None
            query = f"SELECT did, rev, marks FROM marks WHERE did IN ({','.join('?' * len(chunk))})"
            for did, rev, marks in self._db.execute(query, chunk):
                found[did] = (rev, _marks_of(json.loads(marks)))
        return found

    def valid_marks(self, did: str, rev: str) -> dict[str, Mark]:
        """The account's marks that hold at `rev`, its repository's latest commit."""
        stored, marks = self.load(did)
        return marks if stored == rev else {}

    def _update(self, did: str, change: _Change) -> None:
        if self._shared:
            self._update_shared(did, change)
            return
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rev, marks = self.load(did)
            new = change(rev, marks)
            if new is not None:
                rev, marks = new
                payload = json.dumps(_plain_marks(marks))
                self._db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?, ?)", (did, rev, payload))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _update_shared(self, did: str, change: _Change) -> None:
        """Read, change, write only if nobody wrote in between (the document's version `v`), else again."""
        marks = _marks_collection()
        for _ in range(MARK_UPDATE_TRIES):
            doc = marks.find_one({"_id": did})
            stored = (doc["rev"], _marks_of(doc["marks"])) if doc else (None, {})
            new = change(*stored)
            if new is None:
                return
            values = {"rev": new[0], "marks": _plain_marks(new[1])}
            if doc is None:
                try:
                    marks.insert_one({"_id": did, **values, "v": 1})
                    return
                except DuplicateKeyError:
                    continue
            written = marks.update_one({"_id": did, "v": doc["v"]}, {"$set": values, "$inc": {"v": 1}})
            if written.matched_count:
                return
        raise RuntimeError(f"the convergence marks of {did} kept changing: gave up after {MARK_UPDATE_TRIES}")

    def advance(self, did: str, previous: str, new: str, media: str) -> None:
        """Our write to `media` built on commit `previous` (swapCommit) and made `new`: the other marks
        valid at `previous` hold at `new`. Any other history invalidates them."""

        def change(rev: str | None, marks: dict[str, Mark]) -> tuple[str, dict[str, Mark]] | None:
            if rev == previous:
                return new, {m: k for m, k in marks.items() if m != media}
            if rev is None or rev < new:
                return new, {}
            return None

        self._update(did, change)

    def mark(self, did: str, rev: str, media: str, mark: Mark) -> None:
        """`media` was verified converged with the repository at `rev`."""

        def change(stored: str | None, marks: dict[str, Mark]) -> tuple[str, dict[str, Mark]] | None:
            if stored == rev:
                return rev, {**marks, media: mark}
            if stored is None or stored < rev:
                return rev, {media: mark}
            return None  # a newer commit is known: this mark is stale already

        self._update(did, change)

    def unmark(self, did: str, media: str) -> None:
        def change(stored: str | None, marks: dict[str, Mark]) -> tuple[str | None, dict[str, Mark]] | None:
            return (stored, {m: k for m, k in marks.items() if m != media}) if media in marks else None

        self._update(did, change)
