"""Tapes the platform's oven already baked: its MP4 becomes the record's video byte for byte, a record the
platform wrote is adopted without a write, an unsound or foreign MP4 is refused (our encode of the ZIP
instead, with the reason), and an ac-native tape syncs from its own MP4. Real PDS, real ffmpeg."""

from __future__ import annotations

import io
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from dagster import AssetKey, AssetRecordsFilter
from PIL import Image

from acpipeline.core.batches import encode_body
from acpipeline.core.cid import blob_cid
from acpipeline.core.items import ItemProblem
from acpipeline.core.mp4 import check_mp4
from acpipeline.core.tape_video.encode import ffmpeg_exe
from acpipeline.core.tape_video.limits import TapeError
from acpipeline.demo.media_server import BLOBS_BUCKET
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import DEFAULT_BLOBS_URL

from .helpers import T0, add_user, head, records, sync
from .test_tape import frame_png, tape_entries, write_zip

TAPE = "computer.aesthetic.tape"
USER_BUCKET = "user-aesthetic-computer"
MB = 1 << 20


# ------------------------------------------------------------------------------------------ builders


def oven_mp4(folder: Path, faststart: bool = True, fps: int = 30, frames: int = 12) -> bytes:
    """An MP4 made as the platform's oven makes one (`oven/baker.mjs`): two-pass nearest scale, libx264 at
    its default preset, so its bytes differ from our encoder's."""
    frame_dir = folder / f"frames-{faststart}"
    frame_dir.mkdir(exist_ok=True)
    for i in range(frames):
        (frame_dir / f"frame-{i:05d}.png").write_bytes(frame_png(64, 48, i))
    out = folder / f"oven-{faststart}.mp4"
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-r", str(fps)]
    args += ["-i", str(frame_dir / "frame-%05d.png")]
    args += ["-vf", "scale=iw*3:ih*3:flags=neighbor,scale=trunc(iw/2)*2:trunc(ih/2)*2:flags=neighbor"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    subprocess.run([*args, *(["-movflags", "+faststart"] if faststart else []), str(out)], check=True)
    return out.read_bytes()


def oven_thumbnail() -> bytes:
    image = Image.open(io.BytesIO(frame_png(64, 48, 6))).resize((192, 144), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


class Tapes:
    """One owner's tapes in MongoDB and their files in the demo storage."""

    def __init__(self, world: Any, name: str) -> None:
        self.world = world
        self.db = world.db()
        self.sub, self.handle, self.did = add_user(world, self.db, name)
        self.count = 0

    def put(self, key: str, data: bytes) -> None:
        path = self.world.media_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def blobs_url(self, key: str) -> str:
        return f"{self.world.media.url}/{BLOBS_BUCKET}/{key}"

    def add(self, code: str, zip_frames: int | None = 8, **fields: Any) -> dict[str, Any]:
        slug = f"{code}-slug"
        if zip_frames is not None:
            folder = self.world.media_root / USER_BUCKET / self.sub
            folder.mkdir(parents=True, exist_ok=True)
            write_zip(folder / f"{slug}.zip", tape_entries(40, 30, zip_frames))
        doc = {
            "_id": ObjectId(),
            "user": self.sub,
            "slug": slug,
            "code": code,
            "when": T0 + timedelta(minutes=self.count),
            "bucket": USER_BUCKET,
            **fields,
        }
        self.count += 1
        self.db["tapes"].insert_one(doc)
        return doc

    def baked(self, code: str, mp4: bytes, thumbnail: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """A tape the oven finished: its MP4 (and poster frame) in the blobs bucket, the document says so."""
        self.put(f"{BLOBS_BUCKET}/tapes/{code}.mp4", mp4)
        if thumbnail is not None:
            self.put(f"{BLOBS_BUCKET}/tapes/{code}-thumb.jpg", thumbnail)
        return self.add(code, mp4Status="complete", mp4Url=self.blobs_url(f"tapes/{code}.mp4"), **fields)

    def platform_record(self, doc: dict[str, Any], mp4: bytes) -> str:
        """What `tape-atproto.mjs` does: the oven's MP4 as blob, a record without thumbnail or zipUrl,
        `at` (and the link) written back to the document. Returns the record's rkey."""
        password = self.db["users"].find_one({"_id": self.sub})["atproto"]["password"]
        client = self.world.client
        session = client.session(self.did, password)
        blob = client.upload_blob(session, mp4, "video/mp4")
        record = {
            "$type": TAPE,
            "slug": doc["slug"],
            "code": doc["code"],
            "acUrl": f"https://aesthetic.computer/!{doc['code']}",
            "when": doc["when"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "video": blob,
            "ref": str(doc["_id"]),
        }
        body = encode_body({"repo": self.did, "collection": TAPE, "record": record})
        created = client.call(
            "POST", "com.atproto.repo.createRecord", body=body, session=session, idempotent=False
        )
        rkey = created["uri"].rsplit("/", 1)[1]
        link = {"rkey": rkey, "uri": created["uri"], "cid": created["cid"]}
        self.db["tapes"].update_one({"_id": doc["_id"]}, {"$set": {"at": link, "atproto": link}})
        return rkey

    def records(self) -> dict[str, dict[str, Any]]:
        """The tape records on the PDS by their `ref`."""
        return {r["value"]["ref"]: r for r in records(self.world, self.did, TAPE)}

    def sync(self) -> Any:
        return sync(self.world, [self.handle], ["tape"])[(self.handle, "tape")]

    def sources(self) -> dict[str, dict[str, Any]]:
        """The last blob stage's per-tape report, by ref."""
        record = self.world.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("media_blobs"), asset_partitions=[f"{self.handle}|tape"]),
            limit=1,
        ).records[0]
        return {t["ref"]: t for t in record.asset_materialization.metadata["tapes"].value}


def cid_of(record: dict[str, Any], field: str = "video") -> str:
    return record["value"][field]["ref"]["$link"]


# ------------------------------------------------------------------------------------------- syncs


def test_a_platform_record_of_an_oven_mp4_is_adopted_without_a_write(world, tmp_path):
    tapes = Tapes(world, "oven")
    mp4 = oven_mp4(tmp_path)
    doc = tapes.baked("ovn1", mp4, oven_thumbnail())
    rkey = tapes.platform_record(doc, mp4)
    before = head(world, tapes.did)

    result = tapes.sync()

    assert result.ok and result.check_passed, result.error
    assert (result.outcome.created, result.outcome.updated, result.outcome.deleted) == (0, 0, 0)
    assert head(world, tapes.did) == before  # no commit at all
    [record] = tapes.records().values()
    assert record["uri"].endswith(rkey)
    assert cid_of(record) == blob_cid(mp4)
    assert "thumbnail" not in record["value"] and "zipUrl" not in record["value"]
    assert tapes.sources()[str(doc["_id"])]["source"] == "oven"
    # the oven's MP4 was used, not the ZIP: nothing of the user's bucket was fetched
    assert not [p for p in world.media.requested if p.startswith(f"/{USER_BUCKET}/")]


def test_an_oven_tape_without_a_record_gets_the_ovens_bytes_and_poster_frame(world, tmp_path):
    tapes = Tapes(world, "ovennew")
    mp4, thumbnail = oven_mp4(tmp_path), oven_thumbnail()
    doc = tapes.baked("ovn2", mp4, thumbnail)

    assert tapes.sync().outcome.created == 1
    record = tapes.records()[str(doc["_id"])]
    assert cid_of(record) == blob_cid(mp4)
    assert cid_of(record, "thumbnail") == blob_cid(thumbnail)
    assert record["value"]["zipUrl"] == "https://aesthetic.computer/media/tapes/ovn2"

    fetched = len(world.media.requested)
    again = tapes.sync()
    assert again.outcome.unchanged == 1 and again.outcome.updated == 0
    assert len(world.media.requested) == fetched  # cached by URL: nothing fetched again


@pytest.mark.parametrize("status", [None, "pending", "processing", "oven-failed", "failed"])
def test_a_tape_the_oven_has_not_baked_gets_our_encode_of_the_zip(world, status):
    tapes = Tapes(world, "unbaked")
    doc = tapes.add("unb1", **({"mp4Status": status} if status else {}))

    assert tapes.sync().outcome.created == 1
    record = tapes.records()[str(doc["_id"])]
    assert record["value"]["zipUrl"] == "https://aesthetic.computer/media/tapes/unb1"
    assert record["value"]["thumbnail"]["mimeType"] == "image/jpeg"
    report = tapes.sources()[str(doc["_id"])]
    assert report["source"] == "zip"
    assert report["fallback"] == (f"mp4Status is {status!r}" if status else "not baked (no mp4Status)")
    assert report["encode_s"] > 0


def test_a_finished_bake_switches_the_record_to_the_ovens_bytes(world, tmp_path):
    tapes = Tapes(world, "switch")
    doc = tapes.add("swi1", mp4Status="pending")
    tapes.sync()
    ours = cid_of(tapes.records()[str(doc["_id"])])

    mp4 = oven_mp4(tmp_path)
    tapes.put(f"{BLOBS_BUCKET}/tapes/swi1.mp4", mp4)
    tapes.db["tapes"].update_one(
        {"_id": doc["_id"]}, {"$set": {"mp4Status": "complete", "mp4Url": tapes.blobs_url("tapes/swi1.mp4")}}
    )
    result = tapes.sync()

    assert result.outcome.updated == 1
    record = tapes.records()[str(doc["_id"])]
    assert ours != blob_cid(mp4) == cid_of(record)
    # no oven poster frame: ours from the earlier encode stays
    assert tapes.sources()[str(doc["_id"])]["thumbnail"].startswith(
        "zip (oven's refused: storage answered 404"
    )


def test_an_oven_mp4_not_faststart_or_from_elsewhere_is_refused_for_our_encode(world, tmp_path):
    tapes = Tapes(world, "refused")
    slow = tapes.baked("ref1", oven_mp4(tmp_path, faststart=False))
    tapes.put(f"{BLOBS_BUCKET}/tapes/ref2.mp4", oven_mp4(tmp_path))  # sound, but named by another host
    foreign_url = f"http://localhost:{world.media.port}/{BLOBS_BUCKET}/tapes/ref2.mp4"
    foreign = tapes.add("ref2", mp4Status="complete", mp4Url=foreign_url)

    result = tapes.sync()

    assert result.outcome.created == 2 and not result.outcome.failed
    by_ref = tapes.records()
    sources = tapes.sources()
    for doc, reason in (
        (slow, "oven MP4 refused: MP4 has its moov after mdat (not faststart)"),
        (
            foreign,
            f"oven MP4 refused: mp4Url host 'localhost:{world.media.port}' is not a configured storage host",
        ),
    ):
        ref = str(doc["_id"])
        assert sources[ref]["source"] == "zip" and sources[ref]["fallback"] == reason
        assert check_mp4(world.client.get_blob(tapes.did, cid_of(by_ref[ref])), 50 * MB).faststart
    assert f"/{BLOBS_BUCKET}/tapes/ref1.mp4" in world.media.requested
    assert f"/{BLOBS_BUCKET}/tapes/ref2.mp4" not in world.media.requested  # never fetched


def test_a_native_tape_syncs_from_its_mp4_without_a_zip(world, tmp_path):
    tapes = Tapes(world, "native")
    sound, slow = oven_mp4(tmp_path), oven_mp4(tmp_path, faststart=False)
    docs = {}
    for code, mp4 in (("nat1", sound), ("nat2", slow)):
        key = f"{USER_BUCKET}/{tapes.sub}/{code}-slug.mp4"
        tapes.put(key, mp4)
        url = f"{world.media.url}/{USER_BUCKET}/{tapes.sub.replace('|', '%7C')}/{code}-slug.mp4"
        docs[code] = tapes.add(
            code, zip_frames=None, kind="mp4", source="ac-native", mp4Status="complete", mp4Url=url
        )

    result = tapes.sync()

    assert result.outcome.created == 2, result.outcome
    assert not [p for p in world.media.requested if p.endswith(".zip")]
    by_ref, sources = tapes.records(), tapes.sources()
    first, second = (by_ref[str(docs[c]["_id"])]["value"] for c in ("nat1", "nat2"))
    assert "zipUrl" not in first and "thumbnail" not in first and "zipUrl" not in second
    assert first["video"]["ref"]["$link"] == blob_cid(sound)
    assert sources[str(docs["nat1"]["_id"])]["how"] == "as uploaded"
    assert sources[str(docs["nat2"]["_id"])]["how"] == "remuxed: moov was after mdat"
    remuxed = world.client.get_blob(tapes.did, second["video"]["ref"]["$link"])
    assert check_mp4(remuxed, 50 * MB).faststart and remuxed != slow


# ------------------------------------------------------------------------------------------- units


def test_document_urls_must_lie_under_a_configured_storage_root():
    storage = StorageResource()
    ok = "https://user-aesthetic-computer.sfo3.digitaloceanspaces.com/auth0|63f0a1/tape-1.mp4"
    assert storage.storage_url(ok, "mp4Url").endswith("/auth0%7C63f0a1/tape-1.mp4")
    blobs = DEFAULT_BLOBS_URL.format(key="tapes/abc.mp4")
    assert storage.storage_url(blobs, "mp4Url") == blobs
    for bad in (
        "https://evil.example/tapes/abc.mp4",
        "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com.evil.example/tapes/abc.mp4",
        "https://user-aesthetic-computer.sfo3.digitaloceanspaces.com@evil.example/x.mp4",
        "http://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes/abc.mp4",
        "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes/../secret.mp4",
        "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes/%2e%2e/secret.mp4",
        "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes/a.mp4?x=1",
        "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes//a.mp4",
        "https://other-bucket.sfo3.digitaloceanspaces.com/a.mp4",
    ):
        with pytest.raises(ItemProblem):
            storage.storage_url(bad, "mp4Url")


def test_mp4_checks_name_what_is_wrong(tmp_path):
    good = oven_mp4(tmp_path)
    facts = check_mp4(good, len(good))
    assert facts.faststart and facts.video_codecs == ("avc1",)
    with pytest.raises(TapeError, match="larger than"):
        check_mp4(good, len(good) - 1)
    with pytest.raises(TapeError, match="moov after mdat"):
        check_mp4(oven_mp4(tmp_path, faststart=False), 50 * MB)
    with pytest.raises(TapeError, match="bad size"):
        check_mp4(good[: len(good) - 10], 50 * MB)
    with pytest.raises(TapeError, match="no ftyp"):
        check_mp4(b"\x00\x00\x00\x08free" + good, 50 * MB)
