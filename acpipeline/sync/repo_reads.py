"""Each account's records read in one request (`com.atproto.sync.getRepo`), kept while the repository
stays at the revision they were read at.

The record stage plans a partition from its collection's records and judges it from a fresh read after its
writes. Paging `listRecords` costs a request per 100 records of each collection; `getRepo` returns every
collection in one CAR (bounded and checked: `acpipeline.resources.pds.repo`), and the PDS does not count it
against its global rate limit. What a read returned is kept under ACPIPELINE_HOME (`repos.sqlite`), keyed by
the account and the revision it showed: while the account's latest revision (listRepos, read once per run
by the proof step) is still that one, nothing changed in the repository, and the account's other
partitions (other media types, in other runs) plan from it without asking again. A kept read is never used
at any other revision, and a re-plan after a write whose outcome is unknown always reads afresh.

A read is kept on each machine (a miss costs one getRepo), even with `ACPIPELINE_SHARED_STATE=mongodb`.

A CAR the checks refuse (`RepoError`: too big, a block that does not hash to its CID, a record libipld cannot
give back as the PDS stored it) does not stop the account's sync: its collections are read the old way
(the head, describeRepo, then listRecords of each of our collections it has), and that read is not kept.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

from acpipeline.core.media import MEDIA
from acpipeline.core.plan import Existing
from acpipeline.resources.pds import PdsClient, RepoError, RepoLimits, RepoRecord, RepoSnapshot
from acpipeline.resources.pds.repo import DEFAULT_REPO_LIMITS
from acpipeline.sync.cache import connect_local

LIMITS: RepoLimits = DEFAULT_REPO_LIMITS  # what a CAR may hold (`resources/pds/repo.py`)
SCHEMA = "CREATE TABLE IF NOT EXISTS repos(did TEXT PRIMARY KEY, rev TEXT, commit_cid TEXT, records BLOB)"


def latest_commit(client: Any, did: str) -> tuple[str, str]:
    """(cid, rev) of the account's latest commit."""
    answer = client.call("GET", "com.atproto.sync.getLatestCommit", params={"did": did})
    return answer["cid"], answer["rev"]


def repo_collections(client: Any, did: str) -> set[str]:
    """The collections that hold records in the account's repository."""
    return set(client.call("GET", "com.atproto.repo.describeRepo", params={"repo": did})["collections"])


def existing_in(snapshot: RepoSnapshot, nsid: str) -> list[Existing]:
    """The collection's records as the planner and the check take them."""
    return [Existing(rkey=r.rkey, cid=r.cid, value=r.value) for r in snapshot.collection(nsid)]


class RepoReads:
    """getRepo through the run's client, and the reads kept under `home` (one connection, any thread)."""

    def __init__(self, client: PdsClient, home: Path):
        self.client = client
        self._db: sqlite3.Connection = connect_local(
            home / "repos.sqlite", SCHEMA, isolation_level=None, check_same_thread=False
        )

    def close(self) -> None:
        self._db.close()

    def at(self, did: str, rev: str | None) -> RepoSnapshot:
        """The account's repository at `rev`, its latest revision as this run saw it: the read kept at that
        revision, else one read now. `rev` None (not known): a read now."""
        if rev is not None:
            kept = self._kept(did, rev)
            if kept is not None:
                return kept
        return self.now(did)

    def now(self, did: str) -> RepoSnapshot:
        """The account's repository as the PDS holds it now (one getRepo), kept for later partitions."""
        try:
            snapshot = self.client.get_repo(did, LIMITS)
        except RepoError:
            return self._listed(did)
        records = {nsid: [[r.rkey, r.cid, r.value] for r in rs] for nsid, rs in snapshot.records.items()}
        payload = zlib.compress(json.dumps(records, separators=(",", ":")).encode(), 1)
        row = (did, snapshot.rev, snapshot.commit_cid, payload)
        self._db.execute("INSERT OR REPLACE INTO repos VALUES (?, ?, ?, ?)", row)
        return snapshot

    def collections_at(self, did: str, rev: str) -> set[str]:
        """The collections that hold records at `rev` (a kept read, or one now, kept for the syncs)."""
        return set(self.at(did, rev).records)

    def _listed(self, did: str) -> RepoSnapshot:
        """The account's repository as listRecords gives it: the head first (a write built on it is refused
        if anything came after), then our collections' records; the others' names only."""
        commit_cid, rev = latest_commit(self.client, did)
        ours = {rules.nsid for rules in MEDIA.values()}
        records: dict[str, list[RepoRecord]] = {}
        for nsid in repo_collections(self.client, did):
            listed = self.client.list_records(did, nsid) if nsid in ours else []
            records[nsid] = [RepoRecord(r["uri"].rsplit("/", 1)[-1], r["cid"], r["value"]) for r in listed]
        return RepoSnapshot(did, commit_cid, rev, records)

    def _kept(self, did: str, rev: str) -> RepoSnapshot | None:
        row = self._db.execute(
            "SELECT commit_cid, records FROM repos WHERE did = ? AND rev = ?", (did, rev)
        ).fetchone()
        if row is None:
            return None
        stored: dict[str, list[list[Any]]] = json.loads(zlib.decompress(row[1]))
        records = {nsid: [RepoRecord(*r) for r in found] for nsid, found in stored.items()}
        return RepoSnapshot(did, row[0], rev, records)
