"""Convergence marks: per account, the repository revision its marks hold at, and per media type the source
fingerprint its last clean sync synced (`Mark`). Kept in SQLite under `ACPIPELINE_HOME`, or in MongoDB with
`ACPIPELINE_SHARED_STATE=mongodb` (every machine sees the same marks); `converged.py` proves with them.

Each account also keeps its last few commits of ours (`Step`: the commit built on, the one made, the media
written). A partition's mark is earned at the revision its check judged, but saved only once its links are
written; by then another run of ours may have committed to the same account. The steps say whether every
commit since was ours to another collection, and so whether the late mark still holds."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pymongo.errors import DuplicateKeyError

from acpipeline.resources import shared_state
from acpipeline.sync.cache import connect_local

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoCollection

MARK_UPDATE_TRIES = 50  # concurrent changes to one account's marks in MongoDB: each try reads it again
STEPS_KEPT = 64  # an account's latest commits of ours remembered: more than its runs make while one saves

# The marks table, and the table before steps were kept (its marks carried over once, then dropped).
SCHEMA = """
CREATE TABLE IF NOT EXISTS account_marks(did TEXT PRIMARY KEY, rev TEXT, marks TEXT, steps TEXT);
CREATE TABLE IF NOT EXISTS marks(did TEXT PRIMARY KEY, rev TEXT, marks TEXT);
INSERT OR IGNORE INTO account_marks SELECT did, rev, marks, '[]' FROM marks;
DROP TABLE marks;
"""


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


@dataclass(frozen=True)
class Step:
    """One commit of ours to an account: built on `previous` (its swapCommit), it made `new`, to `media`."""

    previous: str
    new: str
    media: str


@dataclass(frozen=True)
class AccountMarks:
    """An account's state: the revision its marks hold at, the marks, and our commits up to that revision."""

    rev: str | None = None
    marks: dict[str, Mark] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()

    def holds_since(self, rev: str, media: str) -> bool:
        """Every commit from `rev` to this revision was ours, to another media type than `media`: a mark of
        `media` made at `rev` holds here too."""
        current = rev
        for step in self.steps:
            if step.previous == current:
                if step.media == media:
                    return False
                current = step.new
        return current == self.rev


def _marks_of(stored: dict[str, Any]) -> dict[str, Mark]:
    return {media: Mark(*value) for media, value in stored.items()}


def _steps_of(stored: list[list[str]] | None) -> tuple[Step, ...]:
    return tuple(Step(*step) for step in stored or ())


def _plain_steps(steps: tuple[Step, ...]) -> list[list[str]]:
    return [[step.previous, step.new, step.media] for step in steps]


def _plain_marks(marks: dict[str, Mark]) -> dict[str, list[Any]]:
    return {media: [mark.fingerprint, mark.desired, mark.not_in_mongodb] for media, mark in marks.items()}


# A change of an account's marks: the new state, or None to leave it as it is.
_Change: TypeAlias = Callable[[AccountMarks], AccountMarks | None]


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
        # Used by a run's thread that sends applyWrites too (advance), never at the same time as the other.
        self._db = connect_local(
            home / "converged.sqlite", SCHEMA, isolation_level=None, check_same_thread=False
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def load(self, did: str) -> tuple[str | None, dict[str, Mark]]:
        state = self._load_accounts([did]).get(did, AccountMarks())
        return state.rev, state.marks

    def load_many(self, dids: Iterable[str]) -> dict[str, tuple[str, dict[str, Mark]]]:
        """The stored rev and marks of each of the accounts that has any: one query per 500 accounts."""
        return {
            did: (state.rev, state.marks)
            for did, state in self._load_accounts(dids).items()
            if state.rev is not None
        }

    def _load_accounts(self, dids: Iterable[str], with_steps: bool = False) -> dict[str, AccountMarks]:
        """The accounts' stored states; their steps only `with_steps` (a change needs them, a proof does not:
        it reads every account of its run)."""
        wanted = list(dict.fromkeys(dids))
        found: dict[str, AccountMarks] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            if self._shared:
                projection = None if with_steps else {"steps": 0}
                for doc in _marks_collection().find({"_id": {"$in": chunk}}, projection):
                    found[doc["_id"]] = _account_of(doc)
                continue
            assert self._db is not None
            placeholders = ",".join("?" * len(chunk))
            steps_column = "steps" if with_steps else "'[]'"
            query = f"SELECT did, rev, marks, {steps_column} FROM account_marks WHERE did IN ({placeholders})"
            for did, rev, marks, steps in self._db.execute(query, chunk):
                found[did] = AccountMarks(rev, _marks_of(json.loads(marks)), _steps_of(json.loads(steps)))
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
            new = change(self._load_accounts([did], with_steps=True).get(did, AccountMarks()))
            if new is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO account_marks VALUES (?, ?, ?, ?)",
                    (did, new.rev, json.dumps(_plain_marks(new.marks)), json.dumps(_plain_steps(new.steps))),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _update_shared(self, did: str, change: _Change) -> None:
        """Read, change, write only if nobody wrote in between (the document's version `v`), else again."""
        marks = _marks_collection()
        for _ in range(MARK_UPDATE_TRIES):
            doc = marks.find_one({"_id": did})
            new = change(_account_of(doc) if doc else AccountMarks())
            if new is None:
                return
            values = {"rev": new.rev, "marks": _plain_marks(new.marks), "steps": _plain_steps(new.steps)}
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

        def change(state: AccountMarks) -> AccountMarks | None:
            if state.rev == previous:
                marks = {m: k for m, k in state.marks.items() if m != media}
                steps = (*state.steps, Step(previous, new, media))[-STEPS_KEPT:]
                return AccountMarks(new, marks, steps)
            if state.rev is None or state.rev < new:
                return AccountMarks(new)
            return None

        self._update(did, change)

    def mark(self, did: str, rev: str, media: str, mark: Mark) -> None:
        """`media` was verified converged with the repository at `rev`. Saved at a later revision when every
        commit since was ours to other collections (its links are written after its check, and another run
        may commit meanwhile); dropped when anything else happened since."""

        def change(state: AccountMarks) -> AccountMarks | None:
            if state.rev == rev or (
                state.rev is not None and state.rev > rev and state.holds_since(rev, media)
            ):
                return AccountMarks(state.rev, {**state.marks, media: mark}, state.steps)
            if state.rev is None or state.rev < rev:
                return AccountMarks(rev, {media: mark})
            return None  # a newer commit, not ours or to this collection, is known: this mark is stale

        self._update(did, change)

    def unmark(self, did: str, media: str) -> None:
        def change(state: AccountMarks) -> AccountMarks | None:
            if media not in state.marks:
                return None
            return AccountMarks(state.rev, {m: k for m, k in state.marks.items() if m != media}, state.steps)

        self._update(did, change)


def _account_of(doc: dict[str, Any]) -> AccountMarks:
    return AccountMarks(doc["rev"], _marks_of(doc["marks"]), _steps_of(doc.get("steps")))
