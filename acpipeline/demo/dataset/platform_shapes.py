"""The platform's newer shapes (spec: "Since mid-2026"): paintings in progress and sealed ones, KidLisp
projection rows, a tape the oven baked. The records the platform's own code wrote for some of them are only
described here (`DatasetSummary.platform_records`); whoever seeds creates them on the PDS afterwards
(`acpipeline.demo.environment.write_platform_records`), which assigns their rkeys. Baked tapes' `mp4Url`
point into the oven's bucket as the environment configures it (ACPIPELINE_BLOBS_URL)."""

from __future__ import annotations

import gzip
import hashlib
import json
import string
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.media_jobs import OvenJob
from acpipeline.demo.dataset.model import (
    ART_BUCKET,
    ART_GUEST_SUB,
    DONE_STATUS,
    STATE_CHUNKS,
    STATE_FILES,
    USER_BUCKET,
    WIP_STATUS,
    PlatformRecord,
    painting_key,
    zip_key,
)
from acpipeline.demo.dataset.text import make_kidlisp
from acpipeline.demo.media_server import BLOBS_BUCKET

AC = "https://aesthetic.computer"
KIDLISP_NSID = "computer.aesthetic.kidlisp"
TAPE_NSID = "computer.aesthetic.tape"
GRIDFS_CHUNK = 261_120  # GridFS's default chunk size
# The platform's newer shapes (paintings in progress, KidLisp projection rows, tapes linked under `at`) date
# from mid-2026; `kidlisp-backfill.mjs` filled the missing projection rows in later.
_SHAPES_START = datetime(2026, 6, 1)
_SHAPES_END = datetime(2026, 10, 31)
_BACKFILL_START = datetime(2026, 11, 1)
_BACKFILL_END = datetime(2026, 11, 15)
_NANOID = string.ascii_letters + string.digits + "_-"  # the editor's ids and keys: [a-zA-Z0-9_-]


def _nanoid(b: Builder, low: int, high: int) -> str:
    return "".join(b.rng.choices(_NANOID, k=b.rng.randint(low, high)))


def _platform_record(
    b: Builder, owner: str, collection: str, value: dict[str, Any], **fields: Any
) -> PlatformRecord:
    handle = b.pds_handles.get(owner)
    assert handle, f"a platform record needs an account: {owner} has none"
    record = PlatformRecord(owner, handle, collection, value, **fields)
    b.platform_records.append(record)
    return record


def _state_file(b: Builder, width: int, height: int, layers: int, saved: datetime) -> tuple[ObjectId, str]:
    """The editor's saved state in GridFS (`painting-states`, one gzipped JSON file): its file id (what
    `wip.snapshot` holds) and the sha256 of its bytes (`wip.hash`)."""
    state = {
        "version": 1,
        "width": width,
        "height": height,
        "layers": [{"index": i, "pixels": b.rng.randbytes(24).hex()} for i in range(layers)],
    }
    data = gzip.compress(json.dumps(state).encode(), mtime=0)
    file_id = b.object_id(saved)
    b.docs[STATE_FILES].append(
        {
            "_id": file_id,
            "length": len(data),
            "chunkSize": GRIDFS_CHUNK,
            "uploadDate": saved,
            "filename": "painting-state.json.gz",
            "metadata": {"createdAt": saved},
        }
    )
    b.docs[STATE_CHUNKS].append({"_id": b.object_id(saved), "files_id": file_id, "n": 0, "data": data})
    return file_id, hashlib.sha256(data).hexdigest()


def _wip(
    b: Builder, when: datetime, size: tuple[int, int], saves: int, layers: int
) -> tuple[dict[str, Any], datetime]:
    """The `wip` sub-document as `painting-wips.mjs` leaves it after `saves` saves (the last with
    `layers` layers), and the time of the last save. Each save replaces the whole sub-document:
    revision + 1, the new state file as `snapshot` (the previous one deleted), its `hash`, `steps`
    (layers beyond the first); `expiresAt` goes once there is a step."""
    width, height = size
    key = _nanoid(b, 43, 64)  # the editor's capability key: only its hash is stored
    wip: dict[str, Any] = {
        "id": _nanoid(b, 21, 32),
        "editorHash": hashlib.sha256(key.encode()).hexdigest(),
        "revision": 0,
        "steps": 0,
        "width": width,
        "height": height,
        "initialLayers": 1,
        "parent": None,
        "expiresAt": when + timedelta(hours=1),
        "snapshot": None,
    }
    saved = when
    if saves:
        saved = when + timedelta(milliseconds=b.rng.randrange(60_000, 3 * 3_600_000))
        snapshot, digest = _state_file(b, width, height, layers, saved)
        steps = max(0, layers - wip["initialLayers"])
        wip.update(revision=saves, snapshot=snapshot, hash=digest, steps=steps)
        if steps > 0:
            del wip["expiresAt"]
    return wip, saved


def add_wip_painting(
    b: Builder, user: str | None, size: tuple[int, int], *, saves: int = 0, layers: int = 1
) -> dict[str, Any]:
    """A painting in progress as the editor inserts it (then saved `saves` times): `slug: "wip/<id>"`,
    `status: "wip"`, no `user` for a guest, and no PNG anywhere (its state is in GridFS)."""
    when = b.when(_SHAPES_START, _SHAPES_END)
    wip, saved = _wip(b, when, size, saves, layers)
    doc: dict[str, Any] = {
        "_id": b.object_id(when),
        "code": b.code("paintings"),
        "slug": f"wip/{wip['id']}",
        "status": WIP_STATUS,
        "when": when,
        "updatedAt": saved,
        "bucket": USER_BUCKET if user else ART_BUCKET,
    }
    if user:
        doc["user"] = user
    doc["wip"] = wip
    b.docs["paintings"].append(doc)
    extra = {"steps": wip["steps"], "empty": wip["steps"] == 0}
    b.shapes["wip_paintings"].append(b.ref("paintings", doc) | extra)
    return doc


def add_sealed_painting(
    b: Builder, user: str | None, size: tuple[int, int], *, layers: int
) -> dict[str, Any]:
    """A painting in progress its owner finished ("Done"): `status: "done"`, the real slug, `completedAt`,
    the `wip` sub-document kept without `expiresAt`, the PNG in storage: a painting like any other."""
    when = b.when(_SHAPES_START, _SHAPES_END)
    doc = b.add_painting(user, size, when=when)  # the slug and the PNG, as every painting has them
    wip, saved = _wip(b, when, size, b.rng.randint(1, 9), layers)
    wip.pop("expiresAt", None)
    completed = saved + timedelta(milliseconds=b.rng.randrange(1_000, 600_000))
    sealed = {
        "_id": doc["_id"],
        "code": doc["code"],
        "slug": doc["slug"],
        "status": DONE_STATUS,
        "when": when,
        "updatedAt": completed,
        "bucket": doc["bucket"],
        **({"user": user} if user else {}),
        "wip": wip,
        "completedAt": completed,
    }
    doc.clear()
    doc.update(sealed)  # in place: the builder holds this dict
    b.shapes["sealed_paintings"].append(b.ref("paintings", doc, painting_key(doc["slug"], user)))
    return doc


def add_kidlisp_projection(
    b: Builder, user: str | None, source: str, *, platform_record: bool, backfilled: bool = False
) -> dict[str, Any]:
    """A KidLisp identity row as `kidlisp-projection.mjs` upserts it (`user: null` for a guest; no
    `hits`, `lastAccessed` or `atproto`), and with `platform_record` the record the platform wrote for
    the piece (no `ref`; its rkey kept in the platform's store, never in MongoDB). A `backfilled` row came
    from `kidlisp-backfill.mjs` later: its `_id` is of that time, its `when` the piece's."""
    when = b.when(_SHAPES_START, _SHAPES_END)
    inserted = when
    if backfilled:
        span_ms = int((_BACKFILL_END - _BACKFILL_START).total_seconds() * 1000)
        inserted = _BACKFILL_START + timedelta(milliseconds=b.rng.randrange(span_ms))
    source = source.strip()
    doc: dict[str, Any] = {
        "_id": b.object_id(inserted),
        "code": b.code("kidlisp"),
        "source": source,
        "hash": hashlib.sha256(source.encode()).hexdigest(),
        "when": when,
        "user": user or None,
    }
    b.docs["kidlisp"].append(doc)
    if platform_record:
        value = _platform_kidlisp(doc["code"], source, when)
        _platform_record(b, user or ART_GUEST_SUB, KIDLISP_NSID, value, source="kidlisp", ref=str(doc["_id"]))
    extra = {"platform_record": platform_record, "backfilled": backfilled}
    b.shapes["kidlisp_projection_rows"].append(b.ref("kidlisp", doc) | extra)
    return doc


def add_orphan_kidlisp_record(b: Builder, user: str) -> PlatformRecord:
    """A record the platform wrote for a piece that exists only in its own store: no row in MongoDB has
    its code (the code is taken here, so none ever will)."""
    when = b.when(_SHAPES_START, _SHAPES_END)
    code = b.code("kidlisp")
    record = _platform_record(b, user, KIDLISP_NSID, _platform_kidlisp(code, make_kidlisp(b.rng), when))
    b.shapes["orphan_kidlisp_records"].append({"code": code, "owner": user, "handle": record.handle})
    return record


def add_platform_tape(
    b: Builder, user: str | None, size: tuple[int, int], frames: int, *, fps: int = 30
) -> dict[str, Any]:
    """A tape the oven baked (`mp4Status: "complete"`, its MP4 and poster frame in the oven's bucket) and
    that `tape-atproto.mjs` then linked: a record with the oven's MP4 as `video` (no thumbnail, no
    zipUrl), the link in the document's `at` (no `atproto`), both made after seeding."""
    doc = b.add_tape(user, size, frames, fps=fps, when=b.when(_SHAPES_START, _SHAPES_END))
    code = doc["code"]
    mp4_key = f"tapes/{code}.mp4"
    doc.pop("mp4Status", None)
    doc.update(kind="zip", mp4Status="complete", mp4Url=b.blobs_url.format(key=mp4_key))
    mp4 = b.path(BLOBS_BUCKET, mp4_key)
    thumbnail = b.path(BLOBS_BUCKET, f"tapes/{code}-thumb.jpg")
    b.oven_jobs.append(OvenJob(b.path(doc["bucket"], zip_key(doc["slug"], user)), mp4, thumbnail, fps))
    value = {
        "$type": TAPE_NSID,
        "slug": doc["slug"],
        "code": code,
        "acUrl": f"{AC}/!{code}",
        "when": _iso(doc["when"]),
        "ref": str(doc["_id"]),
    }
    blobs = {"video": {"path": str(mp4), "mime_type": "video/mp4"}}
    owner = user or ART_GUEST_SUB
    _platform_record(b, owner, TAPE_NSID, value, blobs=blobs, source="tapes", ref=str(doc["_id"]), link="at")
    ref = b.ref("tapes", doc, zip_key(doc["slug"], user)) | {"mp4_key": mp4_key}
    b.shapes["platform_tapes"].append(ref)
    return doc


def _iso(when: datetime) -> str:
    """A naive UTC datetime as the platform's `Date.toISOString()` writes it: milliseconds and `Z`."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _platform_kidlisp(code: str, source: str, when: datetime) -> dict[str, Any]:
    """The record the platform writes for a piece saved in its own store (`media-atproto.mjs` from the
    store's `{code, source, hash, when, user}`, which has no `_id`: so no `ref`)."""
    return {
        "$type": KIDLISP_NSID,
        "code": code,
        "source": source,
        "acUrl": f"{AC}/${code}",
        "when": _iso(when),
    }
