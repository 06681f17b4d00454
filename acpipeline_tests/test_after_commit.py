"""The repository after a sync's commits, known without reading it (`repo_reads.after_commit`): the rules
the check relies on when it judges a partition from the sync's own commits. The CIDs the real PDS gives
every media type's records are pinned in `test_sync.py`; the chain broken by another writer, against the
real PDS, in `test_repo_reads.py`."""

from __future__ import annotations

from typing import Any

import pytest

from acpipeline.core.cid import NotComputable, blob_cid, blob_ref, record_cid
from acpipeline.core.plan import Write
from acpipeline.resources.pds import RepoRecord, RepoSnapshot
from acpipeline.sync.repo_reads import after_commit

MOOD = "computer.aesthetic.mood"
OTHER = "com.example.other"
DID = "did:plc:afteracommit"


def mood(text: str) -> dict[str, Any]:
    return {"$type": MOOD, "mood": text, "when": "2024-03-01T12:00:00.000Z"}


def stored(rkey: str, value: dict[str, Any]) -> RepoRecord:
    return RepoRecord(rkey, record_cid(value), value)


def snapshot(moods: dict[str, str], others: int = 1) -> RepoSnapshot:
    records = {MOOD: [stored(rkey, mood(text)) for rkey, text in sorted(moods.items())]}
    records[OTHER] = [stored(f"o{n}", {"$type": OTHER, "n": n}) for n in range(others)]
    return RepoSnapshot(DID, "bafyread", "3lread", {k: v for k, v in records.items() if v})


def answer(writes: list[Write], commit: str = "bafynext", rev: str = "3lnext") -> dict[str, Any]:
    """What the PDS answers an applyWrites: the new commit, and a result per write."""
    results = [
        {"$type": "com.atproto.repo.applyWrites#deleteResult"}
        if w.action == "delete"
        else {"uri": f"at://{DID}/{MOOD}/{w.rkey}", "cid": record_cid(w.value or {})}
        for w in writes
    ]
    return {"commit": {"cid": commit, "rev": rev}, "results": results}


def test_the_writes_applied_to_the_read_and_nothing_else():
    before = snapshot({"a": "one", "b": "two", "c": "three"})
    writes = [
        Write("create", "ab", "new", value=mood("four")),
        Write("update", "b", "changed", value=mood("TWO")),
        Write("delete", "a", "removed"),
    ]
    after = after_commit(before, MOOD, "bafyread", writes, answer(writes))
    assert after is not None and (after.commit_cid, after.rev, after.did) == ("bafynext", "3lnext", DID)
    assert [(r.rkey, r.value["mood"]) for r in after.collection(MOOD)] == [  # in rkey order, as read
        ("ab", "four"),
        ("b", "TWO"),
        ("c", "three"),
    ]
    assert all(r.cid == record_cid(r.value) for r in after.collection(MOOD))
    assert after.collection(OTHER) == before.collection(OTHER)  # another collection, as the read had it


def test_a_collection_emptied_by_its_deletes_is_gone_as_from_a_read():
    before = snapshot({"a": "one"})
    writes = [Write("delete", "a", "removed")]
    after = after_commit(before, MOOD, "bafyread", writes, answer(writes))
    assert after is not None and set(after.records) == {OTHER}


@pytest.mark.parametrize(
    "case",
    [
        "another commit came between",
        "a CID not of the value sent",
        "a result missing",
        "no commit",
        "no read",
    ],
)
def test_anything_but_an_exact_chain_means_read_the_repository(case):
    before: RepoSnapshot | None = snapshot({"a": "one"})
    writes = [
        Write("create", "b", "new", value=mood("two")),
        Write("update", "a", "changed", value=mood("1")),
    ]
    swapped, answered = "bafyread", answer(writes)
    if case == "another commit came between":
        swapped = "bafysomeoneelse"
    elif case == "a CID not of the value sent":
        answered["results"][1]["cid"] = record_cid(mood("what the PDS holds instead"))
    elif case == "a result missing":
        answered["results"].pop()
    elif case == "no commit":
        answered.pop("commit")
    else:
        before = None
    assert after_commit(before, MOOD, swapped, writes, answered) is None


def test_a_value_whose_cid_is_not_computed_here_means_read_the_repository():
    value = {**mood("bytes"), "data": {"$bytes": "AAEC"}}
    with pytest.raises(NotComputable):
        record_cid(value)
    with pytest.raises(NotComputable):
        record_cid({**mood("link"), "ref": {"$link": "not a cid"}})
    writes = [Write("create", "b", "new", value=value)]
    answered = {"commit": {"cid": "bafynext", "rev": "3lnext"}, "results": [{"cid": "bafyanything"}]}
    assert after_commit(snapshot({}), MOOD, "bafyread", writes, answered) is None


def test_a_records_cid_covers_its_blob_links():
    """A blob reference is a link in the record's DAG-CBOR, so another blob gives another record CID."""
    one = {**mood("painted"), "thumbnail": blob_ref(blob_cid(b"one"), "image/png", 3)}
    two = {**mood("painted"), "thumbnail": blob_ref(blob_cid(b"two"), "image/png", 3)}
    assert record_cid(one) != record_cid(two) and record_cid(one).startswith("bafyrei")
