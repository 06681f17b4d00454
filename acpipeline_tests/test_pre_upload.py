"""Blobs uploaded in the blob stage as soon as they are derived (`acpipeline/sync/pre_upload.py`), against the
real reference PDS behind a `FaultProxy` that counts (and orders) the requests: new items only, never in a
dry run, again in the record stage when too old or when a record of the sync dereferences them, and the
record stage as before when the blob stage has no session."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any

from bson import ObjectId
from dagster import AssetRecordsFilter

from acpipeline.core.batches import batch_writes, encode_body
from acpipeline.core.cid import blob_cid
from acpipeline.resources.pds import _session_path
from acpipeline.settings import PDS_KEPT_CONNECTIONS, network_concurrency, upload_concurrency
from acpipeline.sync import records as record_stage
from acpipeline.sync.assets import media_blobs
from acpipeline.sync.partitions import partition_key
from acpipeline.sync.pre_upload import FRESH_ENV

from .helpers import T0, add_user, records, sync
from .oracle import blob_bytes_match_cid
from .test_reliability import (
    APPLY,
    GET_REPO,
    LOGIN,
    UPLOAD,
    USER_BUCKET,
    add_paintings,
    assert_converged,
    assert_rerun_writes_nothing,
    proxy_for,  # noqa: F401 (a fixture)
    tiny_png,
)

PAINTING = "computer.aesthetic.painting"
ADMIN = ("admin", "admin-pass")  # the test PDS's (conftest's `pds_url`: localpds.start's default)


class Order:
    """A proxy hook keeping the order and time of uploads (by the CID of the bytes sent) and applyWrites."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, float]] = []  # ("upload", cid, t) / ("apply", None, t)
        self._lock = threading.Lock()

    def __call__(self, seen) -> str | None:
        kind = {UPLOAD: "upload", APPLY: "apply"}.get(seen.nsid)
        if seen.phase == "before" and kind:
            with self._lock:
                self.events.append((kind, blob_cid(seen.body) if kind == "upload" else None, time.time()))
        return None

    def uploads(self) -> list[str]:
        return [cid for kind, cid, _ in self.events if kind == "upload" and cid]

    def uploads_before(self, moment: float) -> list[str]:
        return [cid for kind, cid, at in self.events if kind == "upload" and cid and at < moment]

    def uploaded_after_write(self, cid: str, writes: int) -> bool:
        """Whether `cid` was uploaded after the `writes`-th applyWrites call (and before the next)."""
        seen = 0
        for kind, got, _ in self.events:
            seen += kind == "apply"
            if kind == "upload" and got == cid and seen == writes:
                return True
        return False


def blob_stage(world, handle: str, media: str, run_id: str) -> dict[str, Any]:
    """The metadata of the blob stage's materialization of the partition in that run, and (`ended_at`) when
    it was recorded: after the stage's uploads ended (it waits for them), before the record stage began."""
    key = partition_key(handle, media)
    found = world.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=media_blobs.key, asset_partitions=[key]), limit=20
    ).records
    for record in found:
        if record.run_id == run_id and record.asset_materialization is not None:
            metadata = record.asset_materialization.metadata.items()
            return {k: getattr(v, "value", v) for k, v in metadata} | {"ended_at": record.timestamp}
    raise AssertionError(f"no media_blobs materialization of {key} in run {run_id}")


def thumbnails(world, did: str) -> dict[str, str]:
    """ref -> the thumbnail CID of each painting record on the PDS."""
    return {r["value"]["ref"]: r["value"]["thumbnail"]["ref"]["$link"] for r in records(world, did, PAINTING)}


def _image(world, sub: str, slug: str, png: bytes) -> None:
    path = world.media_root / USER_BUCKET / sub / "painting" / f"{slug}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def add_painting(world, db, sub: str, png: bytes, second: int) -> ObjectId:
    """One owned painting with exactly these PNG bytes (paintings with the same bytes share a thumbnail)."""
    when = T0 + timedelta(days=2, seconds=second)
    slug = when.strftime("%Y.%m.%d.%H.%M.%S.000")
    _image(world, sub, slug, png)
    doc = {"_id": ObjectId(), "user": sub, "code": f"q{second:03d}", "slug": slug, "bucket": USER_BUCKET}
    db["paintings"].insert_one({**doc, "when": when})
    return doc["_id"]


def give_new_image(world, db, sub: str, ref: ObjectId, png: bytes, day: int) -> None:
    """The painting's image replaced (at a new slug, as the thumbnail cache is by URL): a new thumbnail."""
    slug = (T0 + timedelta(days=day)).strftime("%Y.%m.%d.%H.%M.%S.000")
    _image(world, sub, slug, png)
    db["paintings"].update_one({"_id": ref}, {"$set": {"slug": slug}})


def test_new_thumbnails_are_uploaded_once_in_the_blob_stage(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "early")
    add_paintings(world, db, sub, 12)
    proxy = proxy_for()
    order = Order()
    proxy.hooks.append(order)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    meta = result.outcome
    assert (meta.created, meta.failed) == (12, 0), result.row()
    # Every thumbnail once, all of them in the blob stage (before it was recorded).
    stage = blob_stage(world, handle, "painting", result.run_id)
    uploaded = order.uploads()
    assert len(uploaded) == len(set(uploaded)) == 12 == proxy.requests[UPLOAD]
    assert sorted(order.uploads_before(stage["ended_at"])) == sorted(uploaded)
    assert set(uploaded) == set(thumbnails(world, did).values())
    assert stage["blobs_pre_uploaded"] == 12 and "pre_upload_stopped" not in stage, str(stage)
    # The record stage counts only what it uploaded itself: nothing.
    assert meta.blobs_uploaded == 0 and meta.blob_bytes_uploaded == 0
    assert proxy.answered[(APPLY, 400)] == 0
    for cid in uploaded:  # the PDS serves each one: the records made them permanent
        assert blob_bytes_match_cid(world.client.get_blob(did, cid), cid)
    assert_converged(world, db, handle, ["painting"])
    assert_rerun_writes_nothing(world, handle, ["painting"])
    assert proxy.requests[UPLOAD] == 12  # the re-run uploaded nothing (no new item)


class InFlight:
    """A proxy hook holding each upload `delay_s` (a round trip to a far PDS) and keeping the most in flight
    at once and the connections they came on (the proxy serves each connection on a thread of its own)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.now, self.most = delay_s, 0, 0
        self.connections: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, seen) -> str | None:
        if seen.nsid != UPLOAD:
            return None
        with self._lock:
            if seen.phase == "before":
                self.now += 1
                self.most = max(self.most, self.now)
                self.connections.add(threading.current_thread().name)
            else:
                self.now -= 1
        if seen.phase == "before":
            time.sleep(self.delay_s)
        return None


def test_uploads_keep_twice_the_network_concurrency_in_flight_on_kept_connections(world, proxy_for):  # noqa: F811
    """An upload waits on the PDS, not on memory: twice ACPIPELINE_NETWORK_CONCURRENCY (8 by default) in
    flight, and no more than the PDS client keeps connections for, so no upload opens one of its own."""
    db = world.db()
    sub, handle, did = add_user(world, db, "wide")
    add_paintings(world, db, sub, 48)
    proxy = proxy_for()
    flight = InFlight(delay_s=0.2)
    proxy.hooks.append(flight)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    assert proxy.requests[UPLOAD] == 48
    assert flight.most == upload_concurrency() == 2 * network_concurrency() == 16
    assert len(flight.connections) <= PDS_KEPT_CONNECTIONS


def test_a_dry_run_uploads_nothing(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "dry")
    add_paintings(world, db, sub, 5)
    proxy = proxy_for()

    result = sync(world, [handle], ["painting"], dry_run=True)[(handle, "painting")]

    assert result.ok, result.row()
    assert result.dry_run and len(result.row()["planned"]) == 5
    assert proxy.requests[UPLOAD] == 0 and proxy.requests[APPLY] == 0
    stage = blob_stage(world, handle, "painting", result.run_id)
    assert stage["blobs_pre_uploaded"] == 0 and stage["pre_upload_stopped"] == "dry run", stage
    assert records(world, did, PAINTING) == []


def test_items_already_linked_are_not_pre_uploaded(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "linked")
    add_paintings(world, db, sub, 3)
    first = sync(world, [handle], ["painting"])[(handle, "painting")]
    assert first.ok and first.outcome.created == 3
    # A linked painting gets another image (a new slug, so a new thumbnail: an update), and a new one comes.
    changed = db["paintings"].find_one({"user": sub, "atproto.rkey": {"$exists": True}})
    assert changed is not None
    give_new_image(world, db, sub, changed["_id"], tiny_png(900), day=9)
    new = add_painting(world, db, sub, tiny_png(901), second=1)
    proxy = proxy_for()
    order = Order()
    proxy.hooks.append(order)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    assert (result.outcome.created, result.outcome.updated) == (1, 1), result.row()
    after = thumbnails(world, did)
    new_cid, changed_cid = after[str(new)], after[str(changed["_id"])]
    stage = blob_stage(world, handle, "painting", result.run_id)
    # Only the new painting's thumbnail went in the blob stage; the linked one's in the record stage.
    assert stage["blobs_pre_uploaded"] == 1, stage
    assert result.outcome.blobs_uploaded == 1, result.row()
    assert sorted(order.uploads()) == sorted([new_cid, changed_cid])
    assert order.uploads_before(stage["ended_at"]) == [new_cid]
    assert_converged(world, db, handle, ["painting"])


def test_a_pre_upload_older_than_the_window_is_uploaded_again(world, proxy_for, monkeypatch):  # noqa: F811
    monkeypatch.setenv(FRESH_ENV, "0.001")  # every pre-upload is stale by the time the record stage runs
    db = world.db()
    sub, handle, did = add_user(world, db, "stale")
    add_paintings(world, db, sub, 4)
    proxy = proxy_for()
    order = Order()
    proxy.hooks.append(order)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    stage = blob_stage(world, handle, "painting", result.run_id)
    assert stage["blobs_pre_uploaded"] == 4, stage
    assert result.outcome.blobs_uploaded == 4, result.row()  # the record stage uploaded them again
    assert proxy.requests[UPLOAD] == 8
    cids = set(thumbnails(world, did).values())
    assert sorted(order.uploads()) == sorted([*cids, *cids])
    assert sorted(order.uploads_before(stage["ended_at"])) == sorted(cids)
    assert proxy.answered[(APPLY, 400)] == 0
    assert_converged(world, db, handle, ["painting"])


def test_a_blob_an_update_or_delete_dereferences_is_uploaded_again_before_the_write(
    world,
    proxy_for,  # noqa: F811
    monkeypatch,
):
    """New paintings whose thumbnails are those of records the same sync deletes (a nuked painting) and
    updates (a painting whose image changed): the PDS deletes those blobs with the last record that
    references them, pre-uploaded or not, so the record stage uploads them again right before the creates."""
    db = world.db()
    sub, handle, did = add_user(world, db, "deref")
    nuked_png, changed_png = tiny_png(700), tiny_png(701)
    nuked = add_painting(world, db, sub, nuked_png, second=0)
    changed = add_painting(world, db, sub, changed_png, second=1)
    first = sync(world, [handle], ["painting"])[(handle, "painting")]
    assert first.ok and first.outcome.created == 2
    before = thumbnails(world, did)
    x_nuked, x_changed = before[str(nuked)], before[str(changed)]
    db["paintings"].update_one({"_id": nuked}, {"$set": {"nuked": True}})
    give_new_image(world, db, sub, changed, tiny_png(702), day=9)
    copy_of_nuked = add_painting(world, db, sub, nuked_png, second=10)
    copy_of_changed = add_painting(world, db, sub, changed_png, second=11)
    # One write per applyWrites: the delete and the update commit before the creates that need their blobs.
    monkeypatch.setattr(record_stage, "batch_writes", partial(batch_writes, max_writes=1))
    proxy = proxy_for()
    order = Order()
    proxy.hooks.append(order)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    meta = result.outcome
    assert (meta.created, meta.updated, meta.deleted) == (2, 1, 1), result.row()
    after = thumbnails(world, did)
    assert after[str(copy_of_nuked)] == x_nuked and after[str(copy_of_changed)] == x_changed
    stage = blob_stage(world, handle, "painting", result.run_id)
    assert stage["blobs_pre_uploaded"] == 2, stage  # the two new paintings' thumbnails
    assert sorted(order.uploads_before(stage["ended_at"])) == sorted([x_nuked, x_changed])
    # No write was refused for a missing blob: both were uploaded again before their creates, after the
    # delete (the first write) and the update (the second) had dereferenced them.
    assert proxy.answered[(APPLY, 400)] == 0
    assert meta.blobs_uploaded == 3, result.row()  # the changed painting's new thumbnail, and those two
    assert order.uploaded_after_write(x_nuked, 2) and order.uploaded_after_write(x_changed, 3)
    for cid in (x_nuked, x_changed):
        assert blob_bytes_match_cid(world.client.get_blob(did, cid), cid)
    assert_converged(world, db, handle, ["painting"])


def test_without_a_session_the_blob_stage_leaves_uploads_to_the_record_stage(world, proxy_for):  # noqa: F811
    """The blob stage's login is refused (the PDS has another password for the account until the record
    stage starts reading the repository): the blob stage goes on, the record stage logs in and uploads."""
    db = world.db()
    sub, handle, did = add_user(world, db, "nosession")
    add_paintings(world, db, sub, 3)
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    _session_path(did).unlink()  # no persisted session: a login is needed
    set_password(world, did, "not-" + password)
    restored = threading.Event()

    def hook(seen) -> str | None:
        # The record stage reads the repository first; the blob stage never does.
        if seen.nsid == GET_REPO and seen.phase == "before" and not restored.is_set():
            set_password(world, did, password)
            restored.set()
        return None

    proxy = proxy_for()
    proxy.hooks.append(hook)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    assert restored.is_set()
    refused = sum(n for (nsid, status), n in proxy.answered.items() if nsid == LOGIN and status >= 400)
    assert refused >= 1 and proxy.answered[(LOGIN, 200)] == 1, proxy.answered
    stage = blob_stage(world, handle, "painting", result.run_id)
    assert stage["blobs_pre_uploaded"] == 0 and stage["pre_upload_accounts_without_session"] == 1, stage
    assert result.outcome.blobs_uploaded == 3 == proxy.requests[UPLOAD], result.row()
    assert_converged(world, db, handle, ["painting"])


def test_a_pre_upload_the_pds_lost_is_uploaded_again_and_the_write_sent_again(world, proxy_for):  # noqa: F811
    """Should a PDS collect a pre-upload sooner than the window assumes, the write it refuses (BlobNotFound)
    is sent again once its blobs are uploaded again. Here the blob is lost for real: a record of another
    collection references it and is deleted just before the first applyWrites."""
    db = world.db()
    sub, handle, did = add_user(world, db, "lost")
    add_paintings(world, db, sub, 2)
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    lost: dict[str, str] = {}

    def hook(seen) -> str | None:
        if seen.nsid == APPLY and seen.phase == "before" and not lost:
            value = seen.json()["writes"][0]["value"]["thumbnail"]
            lost["cid"] = value["ref"]["$link"]
            lose_blob(world, did, password, value)
        return None

    proxy = proxy_for(keep_answers=frozenset({APPLY}))
    proxy.hooks.append(hook)

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    errors = [json.loads(body).get("error") for _, body in proxy.answers]
    assert errors.count("BlobNotFound") == 1, errors  # refused once for the lost blob, then sent again
    stage = blob_stage(world, handle, "painting", result.run_id)
    assert stage["blobs_pre_uploaded"] == 2, stage
    assert result.outcome.blobs_uploaded >= 1 and result.outcome.created == 2, result.row()
    assert blob_bytes_match_cid(world.client.get_blob(did, lost["cid"]), lost["cid"])
    assert_converged(world, db, handle, ["painting"])


def set_password(world, did: str, password: str) -> None:
    body = encode_body({"did": did, "password": password})
    world.client.call("POST", "com.atproto.admin.updateAccountPassword", body=body, basic_auth=ADMIN)


def lose_blob(world, did: str, password: str, blob: dict[str, Any]) -> None:
    """Have the PDS delete a temporary blob: reference it from a record of another collection, delete that."""
    session = world.client.session(did, password)
    other = "com.example.holder"
    body = json.dumps({"repo": did, "collection": other, "record": {"$type": other, "image": blob}})
    created = world.client.call("POST", "com.atproto.repo.createRecord", body=body.encode(), session=session)
    rkey = created["uri"].rsplit("/", 1)[-1]
    body = json.dumps({"repo": did, "collection": other, "rkey": rkey})
    world.client.call("POST", "com.atproto.repo.deleteRecord", body=body.encode(), session=session)
