"""Each account's records read in one request (`com.atproto.sync.getRepo`), kept while the repository
stays at the revision they were read at.

The record stage plans a partition from its collection's records. Its check judges the partition from the
repository as the sync's commits left it (`after_commit`: the plan's read and our writes, exact while each
commit built on the one before), else from a fresh read after the sync. Paging `listRecords` costs a request
per 100 records of each collection; `getRepo` returns every collection in one CAR (bounded and checked:
`acpipeline.resources.pds.repo`), and the PDS does not count it against its global rate limit. What a read
returned is kept under ACPIPELINE_HOME (`repos.sqlite`), keyed by the account and the revision it showed (so
is the repository after our commits): while the account's latest revision (listRepos, read once per run by the
proof step) is still that one, nothing changed in the repository, and the account's other partitions (other
media types, in other runs) plan from it without asking again. A kept read is never used at any other
revision, and a re-plan after a write whose outcome is unknown always reads afresh.

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

from acpipeline.core.cid import NotComputable, record_cid
from acpipeline.core.media import MEDIA
from acpipeline.core.plan import Existing, Write
from acpipeline.resources.pds import PdsClient, RepoError, RepoLimits, RepoRecord, RepoSnapshot
from acpipeline.resources.pds.repo import DEFAULT_REPO_LIMITS
from acpipeline.sync.cache import connect_local

LIMITS: RepoLimits = DEFAULT_REPO_LIMITS  # what a CAR may hold (`resources/pds/repo.py`)
SCHEMA = "CREATE TABLE IF NOT EXISTS repos(did TEXT PRIMARY KEY, rev TEXT, commit_cid TEXT, records BLOB)"


def latest_commit(client: PdsClient, did: str) -> tuple[str, str]:
    """(cid, rev) of the account's latest commit."""
    answer = client.call("GET", "com.atproto.sync.getLatestCommit", params={"did": did})
    return answer["cid"], answer["rev"]


def repo_collections(client: PdsClient, did: str) -> set[str]:
    """The collections that hold records in the account's repository."""
    return set(client.call("GET", "com.atproto.repo.describeRepo", params={"repo": did})["collections"])


def existing_in(snapshot: RepoSnapshot, nsid: str) -> list[Existing]:
    """The collection's records as the planner and the check take them."""
    return [Existing(rkey=r.rkey, cid=r.cid, value=r.value) for r in snapshot.collection(nsid)]


def after_commit(
    snapshot: RepoSnapshot | None, nsid: str, swapped: str, writes: list[Write], answer: dict[str, Any]
) -> RepoSnapshot | None:
    """The repository after an applyWrites of `writes` to `nsid` that named `swapped` as the commit it built
    on, known without reading it: `snapshot` with the writes, when `snapshot` is that commit (the PDS
    applies a swapCommit write only onto it, so nothing else came between) and each record the PDS answered
    has the CID of the value sent (so it stores that value). Else None: the repository must be read."""
    commit = answer.get("commit") or {}
    results = answer.get("results") or []
    if snapshot is None or swapped != snapshot.commit_cid or len(results) != len(writes):
        return None
    if not (commit.get("cid") and commit.get("rev")):
        return None
    records = {record.rkey: record for record in snapshot.collection(nsid)}
    for write, result in zip(writes, results, strict=True):
        if write.action == "delete":
            records.pop(write.rkey, None)
            continue
        value = write.value or {}
        try:
            cid = record_cid(value)
        except NotComputable:
            return None
        if result.get("cid") != cid:
            return None
        records[write.rkey] = RepoRecord(write.rkey, cid, value)
    collections = {name: found for name, found in snapshot.records.items() if name != nsid}
    if records:
        collections[nsid] = [records[rkey] for rkey in sorted(records)]
    return RepoSnapshot(snapshot.did, commit["cid"], commit["rev"], collections)


class RepoReads:
    """getRepo through the run's client, and the reads kept under `home` (one connection, any thread)."""

    def __init__(self, client: PdsClient, home: Path) -> None:
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
        self.keep(snapshot)
        return snapshot

    def keep(self, snapshot: RepoSnapshot) -> None:
        """Keep `snapshot` as the account's repository at its revision, for later partitions."""
        records = {nsid: [[r.rkey, r.cid, r.value] for r in rs] for nsid, rs in snapshot.records.items()}
        payload = zlib.compress(json.dumps(records, separators=(",", ":")).encode(), 1)
        row = (snapshot.did, snapshot.rev, snapshot.commit_cid, payload)
        self._db.execute("INSERT OR REPLACE INTO repos VALUES (?, ?, ?, ?)", row)

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
