"""The quick path of an incremental sync: skip a partition proven converged since its last run.

A partition is converged when its last sync left nothing failed and its check passed, and since then
(1) its MongoDB source is unchanged: the same fingerprint of its items (link fields excluded), and
(2) nothing at all was written to the account's repository: the PDS's latest commit `rev` is the one read
right after that sync. Any write to the account (another tool, a wipe) changes the rev and so sends every
partition of the account through a full run again.

A partition is also converged, with no history needed, when it has nothing on either side: no document in
MongoDB and no record of its collection on the PDS (most users have no tapes, many no pieces).

What it cannot see, and why the nightly schedule and `acpipeline sync --full` always reconcile in full: a
change in storage alone (a recording ZIP uploaded later, a replaced image), and a write by another tool
to the account during a sync run (acpipeline assumes it is the only writer of `computer.aesthetic.*`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from acpipeline.core.fingerprint import combine, item_digest
from acpipeline.core.items import Item
from acpipeline.core.lexicon import default_lexicon_dir
from acpipeline.sync.blobs import TAPE_VERSION, THUMBNAIL_VERSION
from acpipeline.sync.cache import connect_local

FINGERPRINT_VERSION = "fp-v1"


def _rules_version() -> str:
    """Anything that changes what a record should be: blob derivation versions and the lexicons."""
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}:{THUMBNAIL_VERSION}:{TAPE_VERSION}".encode())
    for path in sorted(default_lexicon_dir().rglob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_fingerprint(items: list[Item]) -> str:
    """The partition's digest (as the sensor computes it) under the current rules."""
    return f"{_rules_version()}:{combine(item_digest(item) for item in items)}"


def latest_rev(client, did: str) -> str:
    return client.call("GET", "com.atproto.sync.getLatestCommit", params={"did": did})["rev"]


def repo_collections(client, did: str) -> set[str]:
    """The collections that hold records in the account's repository."""
    return set(client.call("GET", "com.atproto.repo.describeRepo", params={"repo": did})["collections"])


class ConvergedState:
    """Per account: the repo rev after our last sync, and the source fingerprint of each partition that was
    converged then. Kept in SQLite under ACPIPELINE_HOME, shared by every process."""

    def __init__(self, home: Path):
        schema = "CREATE TABLE IF NOT EXISTS account(did TEXT PRIMARY KEY, rev TEXT, marks TEXT)"
        self._db = connect_local(home / "converged.sqlite", schema, isolation_level=None)

    def close(self) -> None:
        self._db.close()

    def load(self, did: str) -> tuple[str | None, dict[str, str]]:
        row = self._db.execute("SELECT rev, marks FROM account WHERE did = ?", (did,)).fetchone()
        return (row[0], json.loads(row[1])) if row else (None, {})

    def save(self, did: str, rev: str, marks: dict[str, str]) -> None:
        self._db.execute("INSERT OR REPLACE INTO account VALUES (?, ?, ?)", (did, rev, json.dumps(marks)))

    def forget(self, did: str) -> None:
        self._db.execute("DELETE FROM account WHERE did = ?", (did,))
