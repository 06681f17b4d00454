"""Proof that a partition is converged, so a run can skip its listing, blobs and writes.

A partition (account x media) is proven converged when its last sync left nothing failed and its check
passed (a *mark*: the source fingerprint it synced, at the repository revision it was checked at), and since
then (1) its MongoDB source is unchanged: the same fingerprint of its items (link fields excluded), and
(2) the account's repository had no commit that could have touched its collection.

(2) is exact, not a guess: the PDS's latest commit `rev` must be the mark's, or every commit since must be one
of ours to another collection. Our writes carry `swapCommit` (the commit they build on), so when one
succeeds we know its predecessor; the marks valid at the predecessor stay valid at the new commit, except
the written collection's (`ConvergedState.advance`). Any other write (another tool, a wipe, a write whose
answer was lost) breaks the chain and every mark of the account lapses.

A partition with nothing on either side (no document, and no record of its collection on the PDS) is
proven too, by `describeRepo`, and then marked like any other.

What it cannot see, and why the nightly reconcile re-checks part of the platform in full every night: a
change in storage alone (a recording ZIP uploaded later, a replaced image) and a record changed by another
tool in the same commit chain as ours (acpipeline assumes it is the only writer of `computer.aesthetic.*`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

from pymongo.errors import DuplicateKeyError

from acpipeline.core.fingerprint import combine, item_digest
from acpipeline.core.items import Item
from acpipeline.core.lexicon import default_lexicon_dir
from acpipeline.core.media import MEDIA
from acpipeline.resources import shared_state
from acpipeline.resources.pds import PdsClient, PdsError
from acpipeline.settings import acpipeline_home
from acpipeline.sync.blobs import THUMBNAIL_VERSION
from acpipeline.sync.cache import connect_local
from acpipeline.sync.extract import Accounts, extract_owners
from acpipeline.sync.repo_reads import RepoReads, latest_commit, repo_collections
from acpipeline.sync.tape_blobs import TAPE_VERSION

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoCollection, MongoDatabase

FINGERPRINT_VERSION = "fp-v2"
LIST_REPOS_PAGE = 1000
MARK_UPDATE_TRIES = 50  # concurrent changes to one account's marks in MongoDB: each try reads it again


def _rules_version() -> str:
    """Anything that changes what a record should be: blob derivation versions and the lexicons."""
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}:{THUMBNAIL_VERSION}:{TAPE_VERSION}".encode())
    for path in sorted(default_lexicon_dir().rglob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_RULES_VERSION: str | None = None


def source_fingerprint(items: list[Item]) -> str:
    """The partition's digest (as the sensor computes it) under the current rules."""
    global _RULES_VERSION
    _RULES_VERSION = _RULES_VERSION or _rules_version()
    return f"{_RULES_VERSION}:{combine(item_digest(item) for item in items)}"


def latest_revs(client: PdsClient, dids: Iterable[str]) -> dict[str, str]:
    """The latest commit rev of each account: `listRepos` pages (1,000 accounts a call), then
    `getLatestCommit` for any the listing did not show; accounts the PDS does not know are left out."""
    wanted = set(dids)
    revs: dict[str, str] = {}
    cursor = None
    if len(wanted) > 3:
        while True:
            params: dict[str, Any] = {"limit": LIST_REPOS_PAGE}
            if cursor:
                params["cursor"] = cursor
            page = client.call("GET", "com.atproto.sync.listRepos", params=params)
            for repo in page.get("repos", []):
                if repo.get("did") in wanted and repo.get("rev"):
                    revs[repo["did"]] = repo["rev"]
            cursor = page.get("cursor")
            if not cursor or not page.get("repos") or wanted <= revs.keys():
                break
    for did in wanted - revs.keys():
        try:
            revs[did] = latest_commit(client, did)[1]
        except PdsError:  # no such repository (any more): nothing to prove; its sync says what is wrong
            continue
    return revs


@dataclass(frozen=True)
class Mark:
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

    def __init__(self, home: Path):
        self._locks = home / "locks"
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

    @contextmanager
    def turn(self, did: str) -> Iterator[Turn]:
        """Our writers of one account, in every process of this machine, commit one at a time: each builds
        on the commit the one before made, instead of failing its swapCommit and sending again. The turn
        carries the head the last of them made, so the next one need not ask the PDS for it."""
        self._locks.mkdir(exist_ok=True)
        name = hashlib.sha256(did.encode()).hexdigest()[:24]
        with open(self._locks / f"{name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                lock.seek(0)
                yield Turn(lock, _head_of(lock.read()))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _head_of(text: str) -> tuple[str, str] | None:
    """The (cid, rev) a turn file holds; None for an empty or torn one (the PDS is asked instead)."""
    parts = text.split()
    if len(parts) == 2 and parts[0].startswith("baf") and len(parts[1]) == 13:
        return parts[0], parts[1]
    return None


class Turn:
    """One writer's turn at an account: `head`, the (cid, rev) our last commit to it made, if known. It may be
    stale (another tool wrote since): a swapCommit on it then fails unapplied, and the writer asks the PDS."""

    def __init__(self, lock: TextIO, head: tuple[str, str] | None) -> None:
        self._lock, self.head = lock, head

    def made(self, cid: str, rev: str) -> None:
        self.head = (cid, rev)
        self._write(f"{cid} {rev}\n")

    def forget(self) -> None:
        """A write whose outcome is unknown may have moved the head: the next writer asks the PDS."""
        self.head = None
        self._write("")

    def _write(self, text: str) -> None:
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(text)
        self._lock.flush()


@dataclass(frozen=True)
class Proof:
    """Why a partition needs no sync: its mark holds, or it is empty on both sides."""

    fingerprint: str
    desired: int
    rev: str
    empty: bool = False
    not_in_mongodb: int = 0


def prove(
    client: PdsClient,
    state: ConvergedState,
    partitions: dict[tuple[str, str], tuple[str, list[Item]]],
    revs: dict[str, str] | None = None,
    collections_at: Callable[[str, str], set[str]] | None = None,
) -> dict[tuple[str, str], Proof]:
    """The partitions proven converged. `partitions`: (handle, media) -> (did, its items); `revs`: the
    accounts' latest revisions if already read, else one `listRepos`. For an account with an unmarked
    partition that has no document, `collections_at(did, rev)` says which collections hold records (by
    default `describeRepo`)."""
    if revs is None:
        revs = latest_revs(client, {did for did, _ in partitions.values()})
    stored = state.load_many(revs)
    collections: dict[str, set[str]] = {}
    proven: dict[tuple[str, str], Proof] = {}
    for (handle, media), (did, items) in partitions.items():
        rev = revs.get(did)
        if rev is None:
            continue
        marks_rev, marks = stored.get(did, (None, {}))
        mark = marks.get(media) if marks_rev == rev else None
        if mark is not None and source_fingerprint(items) == mark.fingerprint:
            proven[(handle, media)] = Proof(
                mark.fingerprint, mark.desired, rev, not_in_mongodb=mark.not_in_mongodb
            )
            continue
        if not items:
            if did not in collections:
                collections[did] = (
                    collections_at(did, rev) if collections_at else repo_collections(client, did)
                )
            if MEDIA[media].nsid not in collections[did]:
                proven[(handle, media)] = Proof(source_fingerprint([]), 0, rev, empty=True)
    return proven


def prove_selection(
    client: PdsClient, db: MongoDatabase, accounts: Accounts, keys: list[tuple[str, str]], full: bool = False
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], Proof]]:
    """Before any run starts (the CLI, the schedule): each partition's estimated work, and the partitions
    proven converged (none with `full`). One query per media type for all the selected owners."""
    partitions: dict[tuple[str, str], tuple[str, list[Item]]] = {}
    for name in dict.fromkeys(m for _, m in keys):
        handles = [h for h, m in keys if m == name]
        found = extract_owners(db, MEDIA[name], [accounts.by_handle[h].owner for h in handles])
        for handle in handles:
            account = accounts.by_handle[handle]
            partitions[(handle, name)] = (account.did, found[account.owner])
    work = {key: len(items) * MEDIA[key[1]].work_per_item for key, (_, items) in partitions.items()}
    if full:
        return work, {}
    state, reads = ConvergedState(acpipeline_home()), RepoReads(client, acpipeline_home())
    try:
        return work, prove(client, state, partitions, collections_at=reads.collections_at)
    finally:
        state.close()
        reads.close()
