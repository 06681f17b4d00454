"""The synthetic Aesthetic Computer dataset and the local media server."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import re
import time
import wave
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import litemongo
import pytest
from bson import ObjectId
from PIL import Image

from acpipeline.core.mp4 import check_mp4
from acpipeline.core.tape_video.encode import check_decodes
from acpipeline.demo import (
    ART_BUCKET,
    SIZES,
    USER_BUCKET,
    DatasetExists,
    MediaServer,
    build_tape_zip,
    painting_key,
    seed_dataset,
    zip_key,
)

TIMESTAMP_SLUG = re.compile(r"^\d{4}\.\d{1,2}\.\d{1,2}\.\d{1,2}\.\d{2}\.\d{2}\.\d{3}$")
CODE = re.compile(r"^[a-z0-9]{3,6}$")
MEDIA = ("paintings", "moods", "pieces", "kidlisp", "tapes", "news-posts")


class FakeAccounts:
    """Stands in for the PDS: a DID derived from the handle, and a record of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, handle: str, password: str) -> str:
        self.calls.append((handle, password))
        return "did:plc:" + hashlib.sha256(handle.encode()).hexdigest()[:24]


def _open_db(path: Path) -> Any:
    return litemongo.connect(str(path))["aesthetic"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("small")
    db = _open_db(root / "db")
    accounts = FakeAccounts()
    started = time.perf_counter()
    summary = seed_dataset(db, root / "media", accounts)
    return {
        "db": db,
        "media": root / "media",
        "summary": summary,
        "accounts": accounts,
        "elapsed": time.perf_counter() - started,
    }


def _docs(db: Any, name: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return list(db[name].find(query or {}))


def _anonymous(doc: dict[str, Any]) -> bool:
    return doc.get("user") is None


def _wip(doc: dict[str, Any]) -> bool:
    """A painting in progress: no item, no PNG."""
    return doc.get("status") == "wip"


def _frames(zf: zipfile.ZipFile) -> list[str]:
    return sorted(n for n in zf.namelist() if re.fullmatch(r"frame-\d{5}\.png", n))


def _check_tape(path: Path) -> dict[str, Any]:
    """Open a tape ZIP, check its structure and motion; return its facts."""
    with zipfile.ZipFile(path) as zf:
        frames = _frames(zf)
        assert frames and frames == [f"frame-{i:05d}.png" for i in range(len(frames))]
        timing = json.loads(zf.read("timing.json"))
        assert isinstance(timing, list) and len(timing) == len(frames)
        assert [t["filename"] for t in timing] == frames
        assert [t["frame"] for t in timing] == list(range(len(frames)))
        assert all(set(t) == {"frame", "filename", "duration", "timestamp"} for t in timing)
        fps = round(1000 / (sum(t["duration"] for t in timing) / len(timing)))
        meta = json.loads(zf.read("metadata.json"))
        assert set(meta) == {
            "originalSize",
            "scaledSize",
            "scale",
            "frameCount",
            "totalDuration",
            "exportedAt",
        }
        assert meta["frameCount"] == len(frames)
        previous = None
        size = None
        for name in frames:
            img = Image.open(io.BytesIO(zf.read(name)))
            img.load()
            size = size or img.size
            assert img.size == size
            pixels = img.tobytes()
            assert pixels != previous, f"{path.name}:{name} repeats the previous frame"
            previous = pixels
        facts = {"frames": len(frames), "fps": fps, "size": size, "soundtrack": None}
        if "soundtrack.wav" in zf.namelist():
            with wave.open(io.BytesIO(zf.read("soundtrack.wav"))) as wav:
                facts["soundtrack"] = wav.getnframes() / wav.getframerate()
        return facts


# ---------------------------------------------------------------------------------------------- small


def test_small_has_every_collection(small: dict[str, Any]) -> None:
    db, summary = small["db"], small["summary"]
    for name in ("users", "@handles", *MEDIA):
        assert db[name].count_documents({}) > 0, name
        assert db[name].count_documents({}) == summary.counts[name]
    print(f"\nFIGURES small dataset generated in {small['elapsed']:.1f} s")  # timing: a figure, not a test


def test_small_users_and_accounts(small: dict[str, Any]) -> None:
    db, summary, accounts = small["db"], small["summary"], small["accounts"]
    users = {doc["_id"]: doc for doc in _docs(db, "users")}
    # The accounts are created by several threads at once: the calls come in any order.
    assert sorted(h for h, _ in accounts.calls) == sorted(summary.handles_with_accounts)
    assert "art.at.aesthetic.computer" in summary.handles_with_accounts
    assert "jeffrey.at.aesthetic.computer" in summary.handles_with_accounts

    art = users["art-guest"]
    assert art["atproto"]["handle"] == "art.at.aesthetic.computer"
    assert summary.art_guest.sub == "art-guest" and summary.art_guest.ac_handle is None

    modern = [doc for doc in users.values() if "atproto" in doc]
    assert len(modern) >= 3  # two users plus art-guest
    for doc in modern:
        atproto = doc["atproto"]
        assert set(atproto) == {"did", "handle", "password", "createdAt"}
        assert atproto["did"].startswith("did:plc:") and atproto["password"]
        assert (atproto["handle"], atproto["password"]) in accounts.calls

    flat = users[summary.flat_fields_user.sub]
    assert "atproto" not in flat
    assert flat["atproto_did"] == summary.flat_fields_user.did
    assert flat["atproto_handle"] == summary.flat_fields_user.pds_handle
    assert flat["atproto_password"] == summary.flat_fields_user.password

    lurker = summary.user_without_account
    assert lurker.pds_handle is None and lurker.did is None
    doc = users[lurker.sub]
    assert not any(key.startswith("atproto") for key in doc)
    assert db["paintings"].count_documents({"user": lurker.sub}) > 0
    assert db["moods"].count_documents({"user": lurker.sub}) > 0

    handles = {doc["_id"]: doc["handle"] for doc in _docs(db, "@handles")}
    for user in summary.users:
        if user.sub == "art-guest":
            assert user.sub not in handles
        else:
            assert handles[user.sub] == user.ac_handle and not user.ac_handle.startswith("@")
    codes = [doc["code"] for doc in users.values()]
    assert len(set(codes)) == len(codes) and all(CODE.match(c) for c in codes)
    assert any(sub.startswith("auth0|") for sub in users)


def test_small_document_shapes(small: dict[str, Any]) -> None:
    db = small["db"]
    for name in MEDIA:
        docs = _docs(db, name)
        for doc in docs:
            assert isinstance(doc["_id"], ObjectId)
            when = doc["when"]
            assert when.microsecond % 1000 == 0
            assert 2023 <= when.year <= 2026
            if name != "moods":
                assert CODE.match(doc["code"].removeprefix("n") if "external" in doc else doc["code"]), doc
        if name != "moods":
            codes = [doc["code"] for doc in docs]
            assert len(set(codes)) == len(codes), f"duplicate codes in {name}"
    for doc in _docs(db, "paintings"):
        if _wip(doc):
            continue  # test_small_platform_shapes
        if _anonymous(doc):
            assert doc["bucket"] == ART_BUCKET
            assert all(re.fullmatch(r"[A-Za-z0-9]{8}", part) for part in doc["slug"].split(":"))
        else:
            assert doc["bucket"] == USER_BUCKET
            assert TIMESTAMP_SLUG.match(doc["slug"])
            w = doc["when"]
            assert doc["slug"].startswith(f"{w.year}.{w.month}.{w.day}.{w.hour}.{w.minute:02d}.")
    for doc in _docs(db, "tapes"):
        assert isinstance(doc["nuked"], bool)
        assert doc["bucket"] == (ART_BUCKET if _anonymous(doc) else USER_BUCKET)
    projected = {row["_id"] for row in small["summary"].kidlisp_projection_rows}
    for doc in _docs(db, "kidlisp"):
        assert doc["hash"] == hashlib.sha256(doc["source"].encode()).hexdigest()
        if str(doc["_id"]) not in projected:
            assert isinstance(doc["hits"], int) and doc["lastAccessed"] >= doc["when"]
    assert all("text" not in doc and isinstance(doc["mood"], str) for doc in _docs(db, "moods"))


def test_small_edge_cases(small: dict[str, Any]) -> None:
    db, summary = small["db"], small["summary"]
    for name in ("paintings", "pieces", "kidlisp", "tapes"):
        assert db[name].count_documents({"user": {"$exists": False}}) > 0, f"no anonymous {name}"
    assert db["moods"].count_documents({"user": {"$exists": False}}) == 0
    # One anonymous painting says `user: null` instead of leaving the field out; `{user: null}` finds both.
    absent = db["paintings"].count_documents({"user": {"$exists": False}})
    assert db["paintings"].count_documents({"user": None}) == absent + 1
    null_doc = db["paintings"].find_one({"_id": ObjectId(summary.null_user_painting["_id"])})
    assert "user" in null_doc and null_doc["user"] is None and null_doc["bucket"] == ART_BUCKET
    for name in ("paintings", "pieces", "tapes"):
        assert db[name].count_documents({"nuked": True}) > 0, f"no nuked {name}"
    assert db["moods"].count_documents({"deleted": True}) > 0
    assert summary.removed_counts["moods"] == db["moods"].count_documents({"deleted": True})

    moods = [doc["mood"] for doc in _docs(db, "moods")]
    assert any(any(ord(ch) > 0xFFFF for ch in text) for text in moods), "no emoji"
    assert any(any(0x80 <= ord(ch) <= 0xFFFF for ch in text) for text in moods), "no non-ASCII BMP text"
    assert all(len(text.encode()) <= 5000 for text in moods)
    twins = [db["moods"].find_one({"_id": ObjectId(ref)}) for ref in summary.same_when_moods]
    assert len(twins) == 2 and twins[0]["when"] == twins[1]["when"]

    lengths = [len(doc["source"]) for doc in _docs(db, "kidlisp")]
    assert any(49_000 <= n <= 50_000 for n in lengths)
    assert max(lengths) <= 50_000 and min(lengths) < 200
    assert summary.long_kidlisp["length"] == max(lengths)
    assert all(len(doc["source"].encode()) <= 50_000 for doc in _docs(db, "kidlisp"))

    news = _docs(db, "news-posts")
    assert {doc["status"] for doc in news} == {"live", "dead"}
    copied = [doc for doc in news if "external" in doc]
    assert copied and all(
        doc["user"] is None and "app.bsky.feed.post" in doc["atproto"]["uri"] for doc in copied
    )
    assert all(doc["user"] for doc in news if "external" not in doc)
    assert any(doc.get("url") and not doc["url"].startswith("https://") for doc in news)
    assert summary.long_news_body["length"] > 10_000


def test_small_paintings_are_real_pngs(small: dict[str, Any]) -> None:
    db, media, summary = small["db"], small["media"], small["summary"]
    sizes = set()
    missing = []
    for doc in _docs(db, "paintings"):
        if _wip(doc):
            continue  # its state is in GridFS: nothing in storage
        path = media / doc["bucket"] / painting_key(doc["slug"], doc.get("user"))
        if not path.exists():
            missing.append(str(doc["_id"]))
            continue
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.load()
            sizes.add(img.size)
    assert missing == [summary.missing_image_painting["_id"]]
    assert not (media / USER_BUCKET / summary.missing_image_painting["key"]).exists()
    assert len(sizes) >= 6
    assert any(w * h < 512 * 512 for w, h in sizes) and any(max(w, h) > 512 for w, h in sizes)
    assert (32, 32) in sizes and (1024, 768) in sizes
    large = media / USER_BUCKET / summary.large_painting["key"]
    assert large.stat().st_size > 1_048_576
    user_dir = media / USER_BUCKET / summary.users[0].sub
    assert "|" in user_dir.name and user_dir.is_dir()


def test_small_recordings(small: dict[str, Any]) -> None:
    db, media, summary = small["db"], small["media"], small["summary"]
    with_colon = [doc for doc in _docs(db, "paintings") if ":" in doc["slug"]]
    assert len(with_colon) >= 2
    found = 0
    for doc in _docs(db, "paintings"):
        user = doc.get("user")
        rec = doc["slug"].partition(":")[2] or doc["slug"]
        path = media / doc["bucket"] / zip_key(rec, user)
        if ":" in doc["slug"]:
            assert path.exists(), doc
        if path.exists():
            found += 1
            with zipfile.ZipFile(path) as zf:
                assert zf.testzip() is None
                steps = json.loads(zf.read("painting.json"))
                assert len(steps) >= 2 and all(f"{s['step']}.png" in zf.namelist() for s in steps)
    assert found == summary.recordings
    assert any(
        doc.get("user")
        for doc in _docs(db, "paintings")
        if ":" not in doc["slug"] and (media / doc["bucket"] / zip_key(doc["slug"], doc.get("user"))).exists()
    )


def test_small_tapes(small: dict[str, Any]) -> None:
    db, media, summary = small["db"], small["media"], small["summary"]
    checked = 0
    soundtracks = []
    for doc in _docs(db, "tapes"):
        path = media / doc["bucket"] / zip_key(doc["slug"], doc.get("user"))
        ref = str(doc["_id"])
        if ref == summary.missing_zip_tape["_id"]:
            assert not path.exists()
            continue
        if ref == summary.broken_zip_tape["_id"]:
            with pytest.raises(zipfile.BadZipFile):
                zipfile.ZipFile(path)
            continue
        facts = _check_tape(path)
        checked += 1
        if facts["soundtrack"] is not None:
            soundtracks.append(ref)
            duration = facts["frames"] / facts["fps"]
            assert abs(facts["soundtrack"] - duration) < 0.01
            assert round(facts["frames"] / facts["soundtrack"]) == facts["fps"]
    assert checked >= 4
    assert soundtracks == [summary.soundtrack_tape["_id"]]
    assert db["tapes"].count_documents({"user": {"$exists": False}, "nuked": False}) >= 2


WIP_FIELDS = {
    "id",
    "editorHash",
    "revision",
    "steps",
    "width",
    "height",
    "initialLayers",
    "parent",
    "snapshot",
}
NANOID = re.compile(r"^[A-Za-z0-9_-]{20,80}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _iso(when: Any) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _check_wip(db: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """The `wip` sub-document as painting-wips.mjs writes it; a saved one's state file in GridFS."""
    wip = doc["wip"]
    assert NANOID.match(wip["id"]) and HEX64.match(wip["editorHash"])
    assert all(isinstance(wip[k], int) for k in ("revision", "steps", "width", "height", "initialLayers"))
    assert wip["parent"] is None and wip["initialLayers"] == 1
    if wip["revision"] == 0:
        assert wip["snapshot"] is None and "hash" not in wip and wip["steps"] == 0
        assert set(wip) == WIP_FIELDS | {"expiresAt"}
    else:
        assert isinstance(wip["snapshot"], ObjectId) and HEX64.match(wip["hash"])
        assert set(wip) == WIP_FIELDS | {"hash"} | ({"expiresAt"} if wip["steps"] == 0 else set())
        state = db["painting-states.files"].find_one({"_id": wip["snapshot"]})
        assert state["filename"] == "painting-state.json.gz" and state["metadata"]["createdAt"]
        [chunk] = _docs(db, "painting-states.chunks", {"files_id": wip["snapshot"]})
        assert len(chunk["data"]) == state["length"]
        assert hashlib.sha256(chunk["data"]).hexdigest() == wip["hash"]
        assert json.loads(gzip.decompress(chunk["data"]))["width"] == wip["width"]
    if "expiresAt" in wip:
        assert wip["expiresAt"] - doc["when"] == timedelta(hours=1)
    return wip


def test_small_platform_shapes(small: dict[str, Any]) -> None:
    """The platform's newer shapes, as its current code writes them (spec: "Since mid-2026")."""
    db, media, summary = small["db"], small["media"], small["summary"]
    jeffrey, art = summary.user("jeffrey"), summary.art_guest

    # Paintings in progress: two of jeffrey's (one empty that expires, one saved), one of a guest; no PNG.
    wips = [db["paintings"].find_one({"_id": ObjectId(ref["_id"])}) for ref in summary.wip_paintings]
    assert [doc.get("user") for doc in wips] == [jeffrey.sub, jeffrey.sub, None]
    assert _docs(db, "paintings", {"status": "wip"}) == wips
    for doc in wips:
        base = {"_id", "code", "slug", "status", "when", "updatedAt", "bucket", "wip"}
        assert set(doc) == base | ({"user"} if doc.get("user") else set())
        assert doc["bucket"] == (USER_BUCKET if doc.get("user") else ART_BUCKET)
        wip = _check_wip(db, doc)
        assert doc["slug"] == f"wip/{wip['id']}" and doc["updatedAt"] >= doc["when"]
        assert not [p for p in media.rglob("*") if wip["id"] in str(p) or doc["code"] in p.name]
    empty, saved, guest = (doc["wip"] for doc in wips)
    assert empty["steps"] == 0 and "expiresAt" in empty and empty["snapshot"] is None
    assert saved["steps"] > 0 and "expiresAt" not in saved and isinstance(saved["snapshot"], ObjectId)
    assert guest["steps"] > 0 and isinstance(guest["snapshot"], ObjectId)
    assert [ref["empty"] for ref in summary.wip_paintings] == [True, False, False]

    # Sealed: "done", the real slug, `completedAt`, the `wip` kept without `expiresAt`, the PNG in storage.
    sealed = [db["paintings"].find_one({"_id": ObjectId(ref["_id"])}) for ref in summary.sealed_paintings]
    assert [doc.get("user") for doc in sealed] == [jeffrey.sub, None]
    for doc, ref in zip(sealed, summary.sealed_paintings, strict=True):
        assert doc["status"] == "done" and doc["completedAt"] == doc["updatedAt"] > doc["when"]
        wip = _check_wip(db, doc)
        assert "expiresAt" not in wip and wip["steps"] > 0
        assert Image.open(media / doc["bucket"] / ref["key"]).size == (wip["width"], wip["height"])
    assert TIMESTAMP_SLUG.match(sealed[0]["slug"]) and re.fullmatch(r"[A-Za-z0-9]{8}", sealed[1]["slug"])

    # KidLisp projection rows: identity fields only, `user: null` for a guest.
    rows = summary.kidlisp_projection_rows
    assert [(r["user"], r["platform_record"]) for r in rows] == [
        (jeffrey.sub, True),
        (jeffrey.sub, True),
        (jeffrey.sub, True),
        (jeffrey.sub, False),
        (None, True),
    ]
    docs = {str(doc["_id"]): doc for doc in _docs(db, "kidlisp")}
    for row in rows:
        doc = docs[row["_id"]]
        assert list(doc) == ["_id", "code", "source", "hash", "when", "user"] and doc["source"].strip()
    assert docs[rows[-1]["_id"]]["user"] is None
    assert [r["backfilled"] for r in rows].count(True) == 1
    backfilled = docs[next(r["_id"] for r in rows if r["backfilled"])]
    assert backfilled["_id"].generation_time.replace(tzinfo=None) > backfilled["when"] + timedelta(days=1)

    # The records the platform wrote: KidLisp without `ref` (one of a code MongoDB lacks), the tape.
    records = summary.platform_records
    assert [(r.collection, r.handle, r.did) for r in records] == [
        ("computer.aesthetic.kidlisp", jeffrey.pds_handle, jeffrey.did),
    ] * 3 + [
        ("computer.aesthetic.kidlisp", art.pds_handle, art.did),
        ("computer.aesthetic.kidlisp", jeffrey.pds_handle, jeffrey.did),
        ("computer.aesthetic.tape", jeffrey.pds_handle, jeffrey.did),
    ]
    assert all(r.uri is None and r.rkey is None for r in records)  # made by whoever creates them
    codes = {doc["code"] for doc in docs.values()}
    for record in records[:5]:
        value = record.value
        assert list(value) == ["$type", "code", "source", "acUrl", "when"] and not record.blobs
        assert value["acUrl"] == f"https://aesthetic.computer/${value['code']}"
        if record.ref:
            doc = docs[record.ref]
            assert (value["code"], value["source"], value["when"]) == (
                doc["code"],
                doc["source"],
                _iso(doc["when"]),
            )
        else:
            assert value["code"] not in codes and record.source is None
    [orphan] = summary.orphan_kidlisp_records
    assert orphan == {"code": records[4].value["code"], "owner": jeffrey.sub, "handle": jeffrey.pds_handle}

    # The tape the oven baked and the platform linked: its MP4 (sound, faststart) and poster frame.
    [tape_ref] = summary.platform_tapes
    tape = db["tapes"].find_one({"_id": ObjectId(tape_ref["_id"])})
    code = tape["code"]
    assert tape["mp4Status"] == "complete" and tape["mp4Url"].endswith(f"/tapes/{code}.mp4")
    assert "at" not in tape and "atproto" not in tape  # the link is set once the record exists
    _check_tape(media / USER_BUCKET / tape_ref["key"])
    record = records[5]
    assert record.value == {
        "$type": "computer.aesthetic.tape",
        "slug": tape["slug"],
        "code": code,
        "acUrl": f"https://aesthetic.computer/!{code}",
        "when": _iso(tape["when"]),
        "ref": str(tape["_id"]),
    }
    assert (record.source, record.ref, record.link) == ("tapes", str(tape["_id"]), "at")
    mp4 = Path(record.blobs["video"]["path"])
    assert mp4 == media / "at-blobs-aesthetic-computer" / tape_ref["mp4_key"]
    assert record.blobs["video"]["mime_type"] == "video/mp4"
    facts = check_mp4(mp4.read_bytes(), 50 << 20)
    assert facts.faststart and facts.video_codecs == ("avc1",)
    check_decodes(mp4)
    with Image.open(mp4.with_name(f"{code}-thumb.jpg")) as poster:
        assert poster.format == "JPEG" and poster.size == (128 * 3, 96 * 3)


def test_summary_is_json(small: dict[str, Any]) -> None:
    summary = small["summary"]
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["counts"] == summary.counts
    assert data["user_without_account"]["pds_handle"] is None
    assert summary.user("jeffrey").pds_handle == "jeffrey.at.aesthetic.computer"
    assert summary.user("art.at.aesthetic.computer").sub == "art-guest"
    total = {
        name: sum(c[name] for c in summary.owned_counts.values()) + summary.anonymous_counts[name]
        for name in MEDIA
    }
    assert total == {name: summary.counts[name] for name in MEDIA}
    # Counted by hand from `_small`: live items of jeffrey, fifi, oldtimer (flat fields) and anonymous ones,
    # without lurker's (no account), the missing image and the missing and broken tape ZIPs.
    # News: jeffrey's live posts but the over-long body, fifi's and oldtimer's; no dead or Bluesky post.
    # The newer shapes: two sealed paintings (the three in progress are no items), five KidLisp projection
    # rows (their platform records are adopted, not added), the tape the platform linked.
    assert summary.records_expected == {
        "paintings": 19 + 2,
        "moods": 13,
        "pieces": 6,
        "kidlisp": 12 + 5,
        "tapes": 4 + 1,
        "news-posts": 5,
    }
    assert summary.records_expected_total == 59 + 8
    assert summary.records_on_pds_total == 59 + 8 + 1  # and the platform's record of a piece MongoDB lacks
    assert data["platform_records"][0]["collection"] == "computer.aesthetic.kidlisp"
    assert data["items_per_user"]["all"]["items"]["users"] == 4


def test_deterministic_and_refuses_reseed(small: dict[str, Any], tmp_path: Path) -> None:
    db = _open_db(tmp_path / "db")
    summary = seed_dataset(db, tmp_path / "media", FakeAccounts())
    for name in MEDIA:
        assert _docs(db, name) == _docs(small["db"], name), name
    assert [u.sub for u in summary.users] == [u.sub for u in small["summary"].users]
    files = sorted(p.relative_to(tmp_path / "media") for p in (tmp_path / "media").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(small["media"]) for p in small["media"].rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "media" / rel).read_bytes() == (small["media"] / rel).read_bytes(), rel

    with pytest.raises(DatasetExists):
        seed_dataset(db, tmp_path / "media", FakeAccounts())
    again = seed_dataset(db, tmp_path / "media", FakeAccounts(), seed=8, reset=True)
    assert db["users"].count_documents({}) == again.counts["users"]
    assert db["paintings"].count_documents({}) == again.counts["paintings"]
    assert _docs(db, "paintings") != _docs(small["db"], "paintings")
    with pytest.raises(ValueError):
        seed_dataset(_open_db(tmp_path / "db2"), tmp_path / "m2", FakeAccounts(), size="huge")


def test_build_tape_zip(tmp_path: Path) -> None:
    path = tmp_path / "t.zip"
    build_tape_zip(path, 64, 48, 12, fps=24, soundtrack=True)
    facts = _check_tape(path)
    assert facts == {"frames": 12, "fps": 24, "size": (64, 48), "soundtrack": pytest.approx(0.5, abs=0.001)}


# ---------------------------------------------------------------------------------------------- media server


def _raw(server: MediaServer, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """A request sent exactly as written (httpx would normalise `..` away before sending)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_media_server(small: dict[str, Any], tmp_path: Path) -> None:
    db, media, summary = small["db"], small["media"], small["summary"]
    (tmp_path / "secret.txt").write_text("outside")
    painting = db["paintings"].find_one({"user": summary.users[0].sub, "nuked": {"$exists": False}})
    key = painting_key(painting["slug"], painting["user"])
    local = media / USER_BUCKET / key
    if not local.exists():  # the one missing painting
        painting = db["paintings"].find_one({"_id": ObjectId(summary.large_painting["_id"])})
        key = summary.large_painting["key"]
        local = media / USER_BUCKET / key
    guest = next(doc for doc in _docs(db, "paintings", {"user": {"$exists": False}}) if ":" in doc["slug"])
    tape = db["tapes"].find_one({"_id": ObjectId(summary.soundtrack_tape["_id"])})

    with MediaServer(media) as server:
        assert server.url.startswith("http://127.0.0.1:")
        templates = server.url_templates()
        user = painting["user"]
        image_url = templates["image_url"].format(bucket=USER_BUCKET, user=user, slug=painting["slug"])
        guest_image, _, rec = guest["slug"].partition(":")
        guest_url = templates["guest_image_url"].format(bucket=ART_BUCKET, slug=guest_image)
        rec_url = templates["zip_url"].format(bucket=ART_BUCKET, user_dir="", slug=rec)
        tape_url = templates["zip_url"].format(
            bucket=USER_BUCKET, user_dir=f"{tape['user']}/", slug=tape["slug"]
        )
        missing = summary.missing_image_painting
        missing_url = templates["image_url"].format(
            bucket=USER_BUCKET, user=missing["user"], slug=missing["slug"]
        )

        with httpx.Client(timeout=10) as client:
            resp = client.get(image_url)  # httpx sends `|` as %7C: the server decodes it
            assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
            assert resp.content == local.read_bytes()
            assert int(resp.headers["content-length"]) == local.stat().st_size
            head = client.head(image_url)
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == local.stat().st_size
            assert client.get(guest_url).headers["content-type"] == "image/png"
            for url in (rec_url, tape_url):
                resp = client.head(url)
                assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
            zipped = client.get(tape_url).content
            assert zipfile.ZipFile(io.BytesIO(zipped)).namelist()[0] == "frame-00000.png"
            assert client.get(missing_url).status_code == 404
            assert client.head(missing_url).status_code == 404
            assert client.head(f"{server.url}/{USER_BUCKET}/nope.zip").status_code == 404
            assert client.get(f"{server.url}/{USER_BUCKET}").status_code == 404  # a folder is not an object

        encoded = "/" + USER_BUCKET + "/" + key.replace("|", "%7C")
        assert _raw(server, "GET", encoded)[0] == 200
        assert _raw(server, "HEAD", "/" + USER_BUCKET + "/" + key)[0] == 200
        outside = f"../{tmp_path.name}/secret.txt"
        for path in (
            f"/{outside}",
            f"/{USER_BUCKET}/../../{outside}",
            "/%2e%2e/secret.txt",
            f"/{USER_BUCKET}/%2E%2E/%2e%2e/{outside}",
            "/..%2fsecret.txt",
        ):
            status, _, body = _raw(server, "GET", path)
            assert status in (403, 404) and b"outside" not in body, path
        assert _raw(server, "GET", "/../secret.txt")[0] == 403
    with pytest.raises(RuntimeError):
        _ = server.url


# ---------------------------------------------------------------------------------------------- bench


def test_bench_counts_and_tapes(tmp_path: Path) -> None:
    db = _open_db(tmp_path / "db")
    accounts = FakeAccounts()
    started = time.perf_counter()
    summary = seed_dataset(db, tmp_path / "media", accounts, size="bench")
    print(f"\nFIGURES bench dataset generated in {time.perf_counter() - started:.1f} s")
    assert sorted(h for h, _ in accounts.calls) == [
        "art.at.aesthetic.computer",
        "jeffrey.at.aesthetic.computer",
    ]
    jeffrey = summary.user("jeffrey").sub
    expected = {"paintings": 395, "moods": 226, "pieces": 26, "kidlisp": 2220, "tapes": 0}
    for name, count in expected.items():
        assert db[name].count_documents({"user": jeffrey}) == count, name
        assert summary.owned_counts[jeffrey][name] == count
    assert db["tapes"].count_documents({"user": {"$exists": False}}) == 32
    assert db["tapes"].count_documents({}) == 32
    for name in ("paintings", "moods", "pieces", "kidlisp"):
        assert db[name].count_documents({"user": {"$exists": False}}) == 0
    assert sum(summary.removed_counts.values()) == 0
    lengths = [len(doc["source"]) for doc in _docs(db, "kidlisp")]
    assert sum(n > 5_000 for n in lengths) >= 3 and sorted(lengths)[len(lengths) // 2] < 300
    assert max(lengths) <= 50_000

    media = tmp_path / "media"
    for doc in _docs(db, "paintings"):
        assert (media / USER_BUCKET / painting_key(doc["slug"], jeffrey)).exists()
    frame_counts = []
    for doc in _docs(db, "tapes"):
        facts = _check_tape(media / ART_BUCKET / zip_key(doc["slug"], None))
        width, height = facts["size"]
        assert 128 <= width <= 320 and 120 <= height <= 240
        assert 60 <= facts["frames"] <= 300
        frame_counts.append(facts["frames"])
    assert len(set(frame_counts)) > 5


def test_failed_account_leaves_nothing(tmp_path: Path) -> None:
    """An account the PDS refuses ends the seeding with its error, and nothing is left in the database (the
    user documents go in last), so the next seeding needs no reset."""
    db = _open_db(tmp_path / "db")

    def refuse_fifi(handle: str, password: str) -> str:
        if handle.startswith("fifi."):
            raise RuntimeError("handle taken")
        return FakeAccounts()(handle, password)

    with pytest.raises(RuntimeError, match="handle taken"):
        seed_dataset(db, tmp_path / "media", refuse_fifi)
    for name in ("users", "@handles", *MEDIA):
        assert db[name].count_documents({}) == 0, name
    summary = seed_dataset(db, tmp_path / "media", FakeAccounts())
    assert db["users"].count_documents({}) == summary.counts["users"]


# ---------------------------------------------------------------------------------------------- platform

PLATFORM_HEAVY = {"paintings": 395, "moods": 226, "pieces": 26, "kidlisp": 2220, "tapes": 0}


def _has_account(user: dict[str, Any]) -> bool:
    atproto = user.get("atproto") or {}
    did = atproto.get("did") or user.get("atproto_did")
    password = atproto.get("password") or user.get("atproto_password")
    return bool(did and password)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("platform")
    db = _open_db(root / "db")
    accounts = FakeAccounts()
    started = time.perf_counter()
    summary = seed_dataset(db, root / "media", accounts, size="platform")
    return {
        "db": db,
        "media": root / "media",
        "summary": summary,
        "accounts": accounts,
        "elapsed": time.perf_counter() - started,
    }


def test_platform_users_and_accounts(platform: dict[str, Any]) -> None:
    db, summary, accounts = platform["db"], platform["summary"], platform["accounts"]
    assert "platform" in SIZES
    # timing is the benchmark's (`acpipeline bench --platform` reports `seed_s`, accounts on the PDS included)
    print(f"\nFIGURES platform documents and media generated in {platform['elapsed']:.1f} s")
    for name in ("users", "@handles", *MEDIA):
        assert db[name].count_documents({}) == summary.counts[name], name
    users = {doc["_id"]: doc for doc in _docs(db, "users")}
    people = {sub: doc for sub, doc in users.items() if sub != "art-guest"}
    assert len(people) == 4201 and len(users) == 4202 and len(summary.users) == 4202
    with_account = {sub for sub, doc in people.items() if _has_account(doc)}
    assert len(with_account) == 978 and _has_account(users["art-guest"])

    handles = [h for h, _ in accounts.calls]
    assert len(handles) == len(set(handles)) == 979
    assert sorted(handles) == sorted(summary.handles_with_accounts)
    assert users["art-guest"]["atproto"]["handle"] == "art.at.aesthetic.computer"
    stale = [h for h in handles if h.endswith(".pds.aesthetic.computer")]
    assert len(stale) == 5
    assert all(h.endswith(".at.aesthetic.computer") for h in handles if h not in stale)
    assert all(re.fullmatch(r"[a-z0-9]{3,18}", h.split(".")[0]) for h in handles)
    for user in summary.users:  # every DID filled in from the PDS's answers
        assert (user.did is None) == (user.pds_handle is None)
        if user.did:
            assert user.did == "did:plc:" + hashlib.sha256(user.pds_handle.encode()).hexdigest()[:24]

    flat = [doc for doc in people.values() if "atproto_did" in doc]
    assert len(flat) == 8 and all("atproto" not in doc for doc in flat)
    assert sum(doc["atproto_handle"].endswith(".pds.aesthetic.computer") for doc in flat) == 2
    old = summary.flat_fields_user
    assert users[old.sub]["atproto_did"] == old.did and users[old.sub]["atproto_password"] == old.password
    assert old.pds_handle == "oldtimer.pds.aesthetic.computer"

    lurker = summary.user_without_account
    assert lurker.did is None and lurker.sub not in with_account
    assert db["paintings"].count_documents({"user": lurker.sub}) >= 2
    assert db["moods"].count_documents({"user": lurker.sub}) >= 2
    # Users without an account own items too (skipped by the sync), and not every user picked a handle.
    without = set(people) - with_account
    owners = {doc["user"] for doc in _docs(db, "paintings") if doc.get("user")}
    assert len(owners & without) > 500
    ac_handles = {doc["_id"]: doc["handle"] for doc in _docs(db, "@handles")}
    assert with_account <= set(ac_handles) and 3000 < len(ac_handles) < 4201
    assert len(set(ac_handles.values())) == len(ac_handles)
    assert any(sub.startswith("sotce-") for sub in with_account)
    codes = [doc["code"] for doc in users.values()]
    assert len(set(codes)) == len(codes)


def test_platform_heavy_user_and_anonymous_work(platform: dict[str, Any]) -> None:
    db, media, summary = platform["db"], platform["media"], platform["summary"]
    jeffrey = summary.user("jeffrey.at.aesthetic.computer")
    assert jeffrey.did and jeffrey.ac_handle == "jeffrey"
    for name, count in PLATFORM_HEAVY.items():
        assert db[name].count_documents({"user": jeffrey.sub}) == count, name
        assert summary.owned_counts[jeffrey.sub][name] == count
    for name in ("paintings", "pieces", "tapes"):
        assert db[name].count_documents({"user": jeffrey.sub, "nuked": True}) == 0
    assert db["moods"].count_documents({"user": jeffrey.sub, "deleted": True}) == 0

    everything = _docs(db, "paintings", {"user": None})
    anonymous = [doc for doc in everything if "status" not in doc]  # the classic ones
    assert len(anonymous) == 1064 and summary.anonymous_counts["paintings"] == len(everything) == 1064 + 8 + 6
    recorded = [doc for doc in anonymous if ":" in doc["slug"]]
    assert len(recorded) == 529
    for doc in recorded:
        assert (media / ART_BUCKET / zip_key(doc["slug"].partition(":")[2], None)).exists()
    for doc in anonymous:
        assert doc["bucket"] == ART_BUCKET
        assert (media / ART_BUCKET / painting_key(doc["slug"], None)).exists()
    tapes = _docs(db, "tapes", {"user": None})
    assert len(tapes) == 32 and not any(doc["nuked"] for doc in tapes)
    for doc in tapes:
        assert (media / ART_BUCKET / zip_key(doc["slug"], None)).exists()
    facts = _check_tape(media / ART_BUCKET / zip_key(min(tapes, key=lambda d: d["when"])["slug"], None))
    assert 60 <= facts["frames"] <= 300
    assert summary.anonymous_counts["kidlisp"] > 50 and summary.anonymous_counts["pieces"] > 5
    assert summary.anonymous_counts["moods"] == 0


def test_platform_distribution(platform: dict[str, Any]) -> None:
    db, summary = platform["db"], platform["summary"]
    spread = summary.items_per_user
    everyone, accounted = spread["all"], spread["with_account"]
    assert everyone["items"]["users"] == 4201 and accounted["items"]["users"] == 978
    # A heavy tail: most users have a handful of items or none, a few have hundreds.
    assert everyone["items"]["median"] <= 3 and accounted["items"]["median"] <= 10
    assert accounted["items"]["p99"] >= 5 * max(1, accounted["items"]["median"])
    assert everyone["items"]["max"] == accounted["items"]["max"] == 2867  # the heavy user
    for name in ("paintings", "moods", "kidlisp"):
        assert 0 < everyone[name]["with_any"] < 4201 * 0.5, name
    assert everyone["pieces"]["with_any"] < 4201 * 0.1
    # A few user tapes: most users have none.
    owners = {doc["user"] for doc in _docs(db, "tapes") if doc.get("user")}
    assert 5 <= len(owners) <= 100 and everyone["tapes"]["with_any"] == len(owners)

    # Removed at a few percent.
    for name, field_ in (
        ("paintings", "nuked"),
        ("pieces", "nuked"),
        ("tapes", "nuked"),
        ("moods", "deleted"),
    ):
        removed = db[name].count_documents({field_: True})
        assert removed == summary.removed_counts[name] > 0, name
        assert removed <= 0.1 * summary.counts[name], name
    assert summary.removed_counts["paintings"] >= 0.01 * summary.counts["paintings"]


def test_platform_bad_cases(platform: dict[str, Any]) -> None:
    db, media, summary = platform["db"], platform["media"], platform["summary"]
    missing = summary.missing_image_painting
    assert missing["user"] and not (media / USER_BUCKET / missing["key"]).exists()
    assert not (media / USER_BUCKET / summary.missing_zip_tape["key"]).exists()
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(media / USER_BUCKET / summary.broken_zip_tape["key"])
    null_doc = db["paintings"].find_one({"_id": ObjectId(summary.null_user_painting["_id"])})
    assert "user" in null_doc and null_doc["user"] is None and null_doc["bucket"] == ART_BUCKET
    assert (media / ART_BUCKET / summary.null_user_painting["key"]).exists()
    assert (media / USER_BUCKET / summary.large_painting["key"]).stat().st_size > 1_048_576
    assert 49_000 <= summary.long_kidlisp["length"] <= 50_000
    assert max(len(doc["source"]) for doc in _docs(db, "kidlisp")) == summary.long_kidlisp["length"]
    twins = [db["moods"].find_one({"_id": ObjectId(ref)}) for ref in summary.same_when_moods]
    assert len(twins) == 2 and twins[0]["when"] == twins[1]["when"] and twins[0]["_id"] != twins[1]["_id"]
    sound = _check_tape(media / USER_BUCKET / summary.soundtrack_tape["key"])
    assert sound["soundtrack"] == pytest.approx(1.5, abs=0.01)
    assert all(len(doc["mood"].encode()) <= 5000 for doc in _docs(db, "moods"))
    # Every owned painting but the missing one has its PNG (skipped users' too), paintings in progress none.
    for doc in _docs(db, "paintings", {"user": {"$nin": [None]}, "status": {"$ne": "wip"}}):
        path = media / USER_BUCKET / painting_key(doc["slug"], doc["user"])
        assert path.exists() == (str(doc["_id"]) != missing["_id"]), doc["_id"]


def test_platform_records_expected(platform: dict[str, Any]) -> None:
    """records_expected, recounted from the database: live items of owners with an account, anonymous ones
    (the art account; moods and news are never anonymous), minus the missing image, the missing and broken
    tape ZIPs and the over-long news body; no dead news post, no copy from Bluesky, no painting in
    progress."""
    db, summary = platform["db"], platform["summary"]
    accounted = {doc["_id"] for doc in _docs(db, "users") if _has_account(doc) and doc["_id"] != "art-guest"}
    failing = {
        summary.missing_image_painting["_id"],
        summary.missing_zip_tape["_id"],
        summary.broken_zip_tape["_id"],
        summary.long_news_body["_id"],
    }
    live = {
        "nuked": {"$ne": True},
        "deleted": {"$ne": True},
        "status": {"$nin": ["dead", "wip"]},
        "external": None,
    }
    expected = {}
    for name in MEDIA:
        count = 0
        for doc in _docs(db, name, live):
            owner = doc.get("user")
            anonymous = not owner and name not in ("moods", "news-posts")
            if str(doc["_id"]) not in failing and (owner in accounted or anonymous):
                count += 1
        expected[name] = count
    assert summary.records_expected == expected
    assert summary.records_expected_total == sum(expected.values())
    assert 15_000 <= summary.records_expected_total <= 25_000
    assert expected["tapes"] >= 32 and expected["paintings"] > 1064


def test_platform_shapes(platform: dict[str, Any]) -> None:
    """The newer shapes at the platform's scale, none of them the heavy user's (he keeps his exact counts)."""
    db, summary = platform["db"], platform["summary"]
    users = {doc["_id"]: doc for doc in _docs(db, "users")}
    jeffrey = summary.user("jeffrey").sub
    wips, sealed = summary.wip_paintings, summary.sealed_paintings
    assert len(wips) == 36 and len(sealed) == 30
    assert db["paintings"].count_documents({"status": "wip"}) == 36
    assert db["paintings"].count_documents({"status": "done"}) == 30
    for refs, guests in ((wips, 8), (sealed, 6)):
        owners = [ref["user"] for ref in refs]
        assert owners.count(None) == guests and jeffrey not in owners
        assert sum(_has_account(users[o]) for o in owners if o) == len(refs) - guests - 4
    assert 10 <= sum(ref["empty"] for ref in wips) <= 26
    for ref in wips[:6] + sealed[:6]:
        _check_wip(db, db["paintings"].find_one({"_id": ObjectId(ref["_id"])}))

    rows = summary.kidlisp_projection_rows
    assert len(rows) == 408 and all(row["user"] != jeffrey for row in rows)
    assert db["kidlisp"].count_documents({"hits": {"$exists": False}}) == 408
    owners = {row["user"] for row in rows if row["user"]}
    assert 60 <= len(owners) <= 200
    with_record = [row for row in rows if row["platform_record"]]
    assert 0.7 * len(rows) <= len(with_record) <= 0.9 * len(rows)
    assert all(row["user"] is None or _has_account(users[row["user"]]) for row in with_record)
    assert any(row["user"] and not _has_account(users[row["user"]]) for row in rows)
    assert 20 <= sum(row["user"] is None for row in rows) <= 60
    assert 0.5 * len(rows) <= sum(row["backfilled"] for row in rows) <= 0.7 * len(rows)

    records = summary.platform_records
    kidlisp = [r for r in records if r.collection == "computer.aesthetic.kidlisp"]
    assert len(kidlisp) == len(with_record) + 6 and len(summary.orphan_kidlisp_records) == 6
    assert len(summary.platform_tapes) == 3 == len(records) - len(kidlisp)
    codes = {doc["code"] for doc in _docs(db, "kidlisp")}
    assert not {orphan["code"] for orphan in summary.orphan_kidlisp_records} & codes
    assert all(r.did and "ref" not in r.value for r in kidlisp)
    per_account: dict[str, int] = {}
    for record in records:
        per_account[record.handle] = per_account.get(record.handle, 0) + 1
    assert len(per_account) >= 50 and max(per_account.values()) < 200  # one applyWrites call each
    assert summary.records_on_pds_total == summary.records_expected_total + 6


def test_platform_is_deterministic(tmp_path: Path) -> None:
    """The same seed gives the same documents and the same media (every file is drawn from a seed of its
    own, recorded in its job); only passwords and account dates differ. Checked on the builder, without
    writing the files twice."""
    from acpipeline.demo.dataset.builder import Builder
    from acpipeline.demo.dataset.platform import platform_dataset

    def build() -> Any:
        builder = Builder(tmp_path, FakeAccounts(), 7, defer_media=True)
        platform_dataset(builder)
        builder.finish_accounts()
        return builder

    first, second = build(), build()
    for name in MEDIA:
        assert first.docs[name] == second.docs[name], name
    assert first.media_jobs == second.media_jobs and first.tape_jobs == second.tape_jobs
    assert first.oven_jobs == second.oven_jobs and first.platform_records == second.platform_records
    assert [u.sub for u in first.users] == [u.sub for u in second.users]
    assert [u.pds_handle for u in first.users] == [u.pds_handle for u in second.users]
    assert [u.password for u in first.users if u.password] != [u.password for u in second.users if u.password]
