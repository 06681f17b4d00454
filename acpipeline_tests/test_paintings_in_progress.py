"""Paintings in progress, as the platform's editor keeps them in `paintings` (`painting-wips.mjs`), against
the real PDS: never an item (not published, not failed, not desired), never a change the sensor sees however
often they are saved, never in the way of a partition's convergence proof; sealed, they sync like any other.
The editor's capability (`wip.editorHash`) and its state's id (`wip.snapshot`) reach no metadata or log."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from bson import ObjectId

from acpipeline.sync.partitions import partition_key

from .helpers import T0, add_user, records, sync
from .test_operations import SensorDriver
from .test_reliability import USER_BUCKET, add_paintings, tiny_png

PAINTING = "computer.aesthetic.painting"


def start_wip(db, sub: str | None, n: int) -> dict:
    """A painting started in the editor: inserted empty, with its capability hash, expiring in an hour."""
    key = secrets.token_urlsafe(32)
    when = T0 + timedelta(days=30, minutes=n)
    doc = {
        "_id": ObjectId(),
        "code": f"w{n:03d}",
        "slug": f"wip/{secrets.token_urlsafe(24)}",
        "status": "wip",
        "when": when,
        "updatedAt": when,
        "bucket": USER_BUCKET if sub else "art-aesthetic-computer",
        "wip": {
            "id": secrets.token_urlsafe(24),
            "editorHash": hashlib.sha256(key.encode()).hexdigest(),
            "revision": 0,
            "steps": 0,
            "width": 64,
            "height": 64,
            "initialLayers": 1,
            "parent": None,
            "expiresAt": when + timedelta(hours=1),
            "snapshot": None,
        },
    }
    if sub:
        doc["user"] = sub
    db["paintings"].insert_one(doc)
    return doc


def save_wip(db, doc: dict, revision: int) -> ObjectId:
    """One save: the whole `wip` rewritten (a new state file, more steps, no expiry) and `updatedAt`."""
    snapshot = ObjectId()
    wip = {k: v for k, v in doc["wip"].items() if k != "expiresAt"}
    wip |= {"revision": revision, "steps": revision, "snapshot": snapshot, "hash": secrets.token_hex(32)}
    db["paintings"].update_one(
        {"_id": doc["_id"]}, {"$set": {"wip": wip, "updatedAt": doc["when"] + timedelta(seconds=revision)}}
    )
    return snapshot


def seal(world, db, doc: dict, sub: str) -> str:
    """ "Done": the real slug, `status: done`, `completedAt`, the `wip` kept, and the PNG in storage."""
    slug = (doc["when"] + timedelta(hours=2)).strftime("%Y.%m.%d.%H.%M.%S.000")
    path = world.media_root / USER_BUCKET / sub / "painting" / f"{slug}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_png(99))
    done = {"status": "done", "slug": slug, "completedAt": doc["when"] + timedelta(hours=2)}
    db["paintings"].update_one({"_id": doc["_id"]}, {"$set": done, "$unset": {"wip.expiresAt": ""}})
    return slug


def recorded_text(world) -> str:
    """Every event of every run in the instance (log lines, materializations, checks), as text."""
    return "\n".join(
        repr(entry) for run in world.instance.get_runs() for entry in world.instance.all_logs(run.run_id)
    )


def test_paintings_in_progress_are_not_items_and_a_sealed_one_syncs(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "painter")
    finished = add_paintings(world, db, sub, 2)
    empty, busy = start_wip(db, sub, 0), start_wip(db, sub, 1)
    snapshots = [save_wip(db, busy, revision) for revision in range(1, 4)]

    result = sync(world, [handle], ["painting"])[(handle, "painting")]
    row = result.row()
    assert result.ok and result.check_passed, row
    assert (row["desired"], row["created"], row["failed"]) == (2, 2, 0), row
    assert sorted(r["value"]["ref"] for r in records(world, did, PAINTING)) == sorted(map(str, finished))

    # Saves and an expiry (the platform deletes an empty one after an hour) leave the proof standing.
    save_wip(db, busy, 4)
    db["paintings"].delete_one({"_id": empty["_id"]})
    again = sync(world, [handle], ["painting"], full=False)[(handle, "painting")]
    assert again.skipped and again.ok, again.row()

    # Sealed, it is a painting like any other: created with its thumbnail, the others untouched.
    seal(world, db, busy, sub)
    sealed = sync(world, [handle], ["painting"], full=False)[(handle, "painting")]
    assert not sealed.skipped and sealed.check_passed, sealed.row()
    assert (sealed.row()["created"], sealed.row()["failed"]) == (1, 0), sealed.row()
    by_ref = {r["value"]["ref"]: r["value"] for r in records(world, did, PAINTING)}
    assert set(by_ref) == {*map(str, finished), str(busy["_id"])}
    assert "thumbnail" in by_ref[str(busy["_id"])] and not by_ref[str(busy["_id"])]["slug"].startswith("wip/")
    last = sync(world, [handle], ["painting"])[(handle, "painting")].row()
    assert (last["created"], last["updated"], last["deleted"], last["failed"]) == (0, 0, 0, 0), last

    # The editor's capability and its state's ids are in MongoDB, never in what Dagster recorded.
    recorded = recorded_text(world)
    assert str(busy["_id"]) in recorded  # the sealed painting's own history is there
    for secret in [busy["wip"]["editorHash"], empty["wip"]["editorHash"], *map(str, snapshots)]:
        assert secret not in recorded


def test_a_hundred_saves_of_a_painting_in_progress_request_no_run(world):
    db = world.db()
    sub, handle, _ = add_user(world, db, "saver")
    add_paintings(world, db, sub, 1)
    sync(world, [handle], ["painting"])
    driver = SensorDriver(world)
    assert driver.tick() == {}  # the baseline

    doc = start_wip(db, sub, 5)
    assert driver.tick() == {}
    for revision in range(1, 101):
        save_wip(db, doc, revision)
        if revision % 10 == 0:
            assert driver.tick() == {}, revision
    assert driver.tick() == {}

    seal(world, db, doc, sub)
    assert driver.tick() == {partition_key(handle, "painting"): "source-changed"}
