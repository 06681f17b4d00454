"""Failures between the PDS and MongoDB, against the real PDS: MongoDB refusing the link write-back after the
PDS accepted the records, and documents edited or removed while a run writes. Judged by the oracle."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect

from .helpers import add_moods, add_user, sync
from .oracle import assert_mirrored, expected_moods, listed_over_http
from .test_reliability import _mood_writes, proxy_for  # noqa: F401 (proxy_for is a fixture)

MOOD = "computer.aesthetic.mood"


def no_writes(result) -> bool:
    meta = result.outcome
    return (meta.created, meta.updated, meta.deleted, meta.commits) == (0, 0, 0, 0)


def test_mongodb_refusing_the_write_back_fails_the_partition_and_the_next_run_links_without_writing(
    world, monkeypatch
):
    db = world.db()
    sub, handle, did = add_user(world, db, "linkfail")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])
    collection_type = type(db["moods"])
    bulk_write = collection_type.bulk_write

    def refusing(self, requests, *args, **kwargs):
        # A pymongo error at the resource boundary, for the moods' link updates only (the PDS has them).
        if self.name == "moods":
            raise AutoReconnect("connection closed by the server")
        return bulk_write(self, requests, *args, **kwargs)

    monkeypatch.setattr(collection_type, "bulk_write", refusing)
    first = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    monkeypatch.setattr(collection_type, "bulk_write", bulk_write)
    assert not first.ok, first.row()
    assert "MongoDB" in (first.error or "") and "connection closed" in first.error, first.error
    assert len(listed_over_http(world.pds_url, did, MOOD)) == 450  # the PDS took them
    assert db["moods"].count_documents({"atproto.rkey": {"$exists": True}}) == 0

    # Not proven converged (no mark was made), so the next run lists, adopts, links: no PDS write.
    second = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert second.ok and second.check_passed, second.row()
    assert no_writes(second) and second.outcome.mongo_updates == 450, second.row()
    assert_mirrored(world.pds_url, db, did, "moods", MOOD, expected_moods(db, sub))


@pytest.mark.parametrize("change", ["edit", "delete"])
def test_documents_changed_during_a_run_converge_on_the_next(world, proxy_for, change):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "midrun")
    ids = add_moods(db, sub, [f"mood {i}" for i in range(250)])
    proxy = proxy_for()
    changed: list[int] = []

    def hook(seen) -> None:
        # As the run's first mood write reaches the PDS (planned from the documents as they were), the owner
        # edits or deletes a mood that write carries.
        if seen.phase == "before" and _mood_writes(seen) and not changed:
            update = {"mood": "edited while syncing"} if change == "edit" else {"deleted": True}
            world.db()["moods"].update_one({"_id": ids[0]}, {"$set": update})  # this thread's connection
            changed.append(seen.n)
        return None

    proxy.hooks.append(hook)
    first = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    proxy.hooks.remove(hook)
    assert changed and first.ok, first.row()

    second = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert second.ok and second.check_passed, second.row()
    expected = (0, 1, 0) if change == "edit" else (0, 0, 1)
    meta = second.outcome
    assert (meta.created, meta.updated, meta.deleted) == expected, second.row()
    assert_mirrored(world.pds_url, db, did, "moods", MOOD, expected_moods(db, sub))
    third = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert third.skipped or no_writes(third), third.row()
