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

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acpipeline.core.fingerprint import combine, item_digest
from acpipeline.core.items import Item
from acpipeline.core.lexicon import default_lexicon_dir
from acpipeline.core.media import MEDIA
from acpipeline.resources.pds import PdsClient, PdsError
from acpipeline.settings import acpipeline_home
from acpipeline.sync.blobs import THUMBNAIL_VERSION
from acpipeline.sync.extract import Accounts, extract_owners
from acpipeline.sync.marks import ConvergedState
from acpipeline.sync.repo_reads import RepoReads, latest_commit, repo_collections
from acpipeline.sync.tape_blobs import TAPE_VERSION

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

FINGERPRINT_VERSION = "fp-v2"
LIST_REPOS_PAGE = 1000


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
