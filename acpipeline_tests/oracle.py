"""An oracle that shares no code with what it judges: the expected records come from the MongoDB documents and
the spec's mapping table (`aesthetic-computer.md`, "Records": the fields, the short links, `when` as
JavaScript's `toISOString()`, `ref` as the `_id`'s 24 hex characters), and the PDS is read over plain HTTP
with the paging written here. Nothing from `acpipeline` is imported.

Paintings (`expected_paintings` with a `Storage`): the record holds what the spec's table names, with the
short links of "Short links", `recordingUrl` only when a HEAD of the recording ZIP answers 200, and only for
a painting whose PNG storage delivers (else it is a failed item, without a record). Its thumbnail blob is
judged by what the spec says of it ("Painting thumbnail"), not by a thumbnail made here: the PDS serves it
(`com.atproto.sync.getBlob`), its CID is the raw-codec SHA-256 CID of those bytes (decoded with atproto's own
CID tools), it is a PNG of 512x512 with the painting fitted in, and, when the painting was enlarged
(nearest-neighbour), each of its pixels shows there over the rgb(32,32,32) backdrop."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from atproto_core.cid import CID
from PIL import Image

AC = "https://aesthetic.computer"
TID_CHARS = set("234567abcdefghijklmnopqrstuvwxyz")
PAINTING = "computer.aesthetic.painting"
THUMBNAIL_BOX = 512
BACKDROP = (32, 32, 32)
MAX_THUMBNAIL_BYTES = 1_048_576
RAW_CODEC, SHA2_256 = 0x55, 0x12


def listed_over_http(pds_url: str, did: str, nsid: str) -> list[dict[str, Any]]:
    """Every record of the collection, page after page (100 a page, the PDS's maximum)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"repo": did, "collection": nsid, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = httpx.get(f"{pds_url}/xrpc/com.atproto.repo.listRecords", params=params, timeout=30)
        response.raise_for_status()
        page = response.json()
        found.extend(page["records"])
        cursor = page.get("cursor")
        if not cursor or not page["records"]:
            return found


def js_iso(when: datetime) -> str:
    """`Date.prototype.toISOString()`: UTC, milliseconds, `Z` (a naive datetime from MongoDB is UTC)."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def blob_bytes_match_cid(data: bytes, cid: str) -> bool:
    """Whether `cid` names exactly these bytes as a blob: CIDv1, raw codec, a SHA-256 multihash of them."""
    decoded = CID.decode(cid)
    digest = hashlib.sha256(data).digest()
    return (decoded.version, decoded.codec, decoded.hash.code, decoded.hash.digest) == (
        1,
        RAW_CODEC,
        SHA2_256,
        digest,
    )


def blob_over_http(pds_url: str, did: str, cid: str) -> bytes:
    response = httpx.get(
        f"{pds_url}/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": cid}, timeout=30
    )
    assert response.status_code == 200, (did, cid, response.status_code, response.text[:200])
    return response.content


def expected_moods(db, sub: str) -> dict[str, dict[str, Any]]:
    """ref -> the record: every mood of the user not deleted."""
    return {
        str(doc["_id"]): {"mood": doc["mood"], "when": js_iso(doc["when"]), "ref": str(doc["_id"])}
        for doc in db["moods"].find({"user": sub})
        if not doc.get("deleted")
    }


@dataclass(frozen=True)
class Storage:
    """The platform's media storage as the spec lays it out ("paintings": image bytes and recording ZIPs),
    served at `root` with the bucket as the first path segment (the demo's media server; in production the
    bucket is the host name's first label)."""

    root: str

    def _url(self, bucket: str, *path: str) -> str:
        return "/".join([self.root.rstrip("/"), quote(bucket, safe=""), *(quote(p, safe="") for p in path)])

    def painting_png(self, doc: dict[str, Any]) -> bytes | None:
        """A user's `{user}/painting/{slug}.png`, a guest's `{imageSlug}.png`; None unless storage answers
        200 with a PNG that decodes."""
        image_slug = doc["slug"].split(":", 1)[0]
        user = doc.get("user")
        url = (
            self._url(doc["bucket"], user, "painting", f"{doc['slug']}.png")
            if user
            else self._url(doc["bucket"], f"{image_slug}.png")
        )
        response = httpx.get(url, timeout=30)
        if response.status_code != 200:
            return None
        try:
            with Image.open(io.BytesIO(response.content)) as image:
                image.load()
                if image.format != "PNG":
                    return None
        except Exception:  # noqa: BLE001 (whatever Pillow cannot decode is no painting)
            return None
        return response.content

    def has_recording(self, doc: dict[str, Any]) -> bool:
        """A HEAD of `{user/ if any}{recordingSlug}.zip` answering 200 (the part after `:`, or the slug)."""
        slug = doc["slug"]
        recording = slug.split(":", 1)[1] if ":" in slug else slug
        user = doc.get("user")
        parts = [user, f"{recording}.zip"] if user else [f"{recording}.zip"]
        return httpx.head(self._url(doc["bucket"], *parts), timeout=30).status_code == 200


@dataclass(frozen=True)
class Thumbnail:
    """What a painting record's `thumbnail` must be, judged against the painting's own PNG (`source`)."""

    source: bytes = field(repr=False)

    def verify(self, pds_url: str, did: str, blob: Any, where: Any) -> None:
        assert isinstance(blob, dict) and set(blob) == {"$type", "ref", "mimeType", "size"}, (where, blob)
        assert (blob["$type"], blob["mimeType"]) == ("blob", "image/png"), (where, blob)
        cid = blob["ref"]["$link"]
        data = blob_over_http(pds_url, did, cid)  # the PDS holds the blob the record names
        assert len(data) == blob["size"] and 0 < blob["size"] <= MAX_THUMBNAIL_BYTES, (where, blob, len(data))
        assert blob_bytes_match_cid(data, cid), (where, cid, "is not the CID of the bytes the PDS serves")
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.format == "PNG", (where, decoded.format)
            thumb = decoded.convert("RGBA")
        assert thumb.size == (THUMBNAIL_BOX, THUMBNAIL_BOX), (where, thumb.size)
        with Image.open(io.BytesIO(self.source)) as original:
            painting = original.convert("RGBA")
        width, height = painting.size
        scale = min(THUMBNAIL_BOX / width, THUMBNAIL_BOX / height)
        if scale < 4:  # shrunk (Lanczos) or barely enlarged: its pixels cannot be told apart one by one
            return
        # Enlarged nearest-neighbour and centred: the middle of each painting pixel's block is that pixel,
        # composited onto the opaque backdrop; outside the fitted painting the canvas is transparent.
        left, top = (THUMBNAIL_BOX - width * scale) / 2, (THUMBNAIL_BOX - height * scale) / 2
        wrong = []
        for y in range(height):
            for x in range(width):
                *rgb, alpha = painting.getpixel((x, y))
                over = zip(rgb, BACKDROP, strict=True)
                want = [round((c * alpha + d * (255 - alpha)) / 255) for c, d in over]
                got = thumb.getpixel((int(left + (x + 0.5) * scale), int(top + (y + 0.5) * scale)))
                if got[3] != 255 or any(abs(g - w) > 1 for g, w in zip(got[:3], want, strict=True)):
                    wrong.append((x, y, want, got))
        assert not wrong, (where, f"{len(wrong)} of {width * height} pixels not in the thumbnail", wrong[:3])
        margins = [(int(left) - 2, THUMBNAIL_BOX // 2), (THUMBNAIL_BOX // 2, int(top) - 2)]
        for at in [(x, y) for x, y in margins if x >= 0 and y >= 0]:
            assert thumb.getpixel(at)[3] == 0, (where, "the canvas around the painting is not transparent")


def _painting_fields(doc: dict[str, Any]) -> dict[str, Any]:
    code = doc["code"]
    return {
        "slug": doc["slug"],
        "code": code,
        "imageUrl": f"{AC}/media/paintings/{code}",
        "acUrl": f"{AC}/#{code}",
        "when": js_iso(doc["when"]),
        "ref": str(doc["_id"]),
    }


def expected_paintings(db, sub: str | None, storage: Storage | None = None) -> dict[str, dict[str, Any]]:
    """ref -> the record: every painting of the user (None: anonymous) not nuked. Without `storage`, the
    fields other than the thumbnail blob and `recordingUrl`; with it, the whole record: only paintings whose
    PNG storage delivers, `recordingUrl` when the recording ZIP exists, the thumbnail as a `Thumbnail`."""
    owner = {"user": sub} if sub else {"$or": [{"user": {"$exists": False}}, {"user": None}]}
    out = {}
    for doc in db["paintings"].find(owner):
        if doc.get("nuked"):
            continue
        fields = _painting_fields(doc)
        if storage is not None:
            png = storage.painting_png(doc)
            if png is None:
                continue
            fields = {"$type": PAINTING, **fields, "thumbnail": Thumbnail(png)}
            if storage.has_recording(doc):
                fields["recordingUrl"] = f"{AC}/media/paintings/{doc['code']}.zip"
        out[str(doc["_id"])] = fields
    return out


def tid_micros_and_clock(rkey: str) -> tuple[int, int]:
    """A TID's (microseconds since the epoch, clock id): 13 base32-sortable characters, 53 + 10 bits."""
    assert len(rkey) == 13 and set(rkey) <= TID_CHARS, rkey
    value = 0
    for char in rkey:
        value = value * 32 + "234567abcdefghijklmnopqrstuvwxyz".index(char)
    assert value < 2**63, rkey  # the top bit is 0
    return value >> 10, value & 1023


def when_micros(when: datetime) -> int:
    """A document's `when` (milliseconds, as the record's `when` keeps it) in microseconds since the epoch."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return int(when.timestamp()) * 1_000_000 + when.microsecond // 1000 * 1000


def assert_mirrored(
    pds_url: str,
    db,
    did: str,
    collection: str,
    nsid: str,
    expected: dict[str, dict[str, Any]],
    exact: bool = False,
) -> list[dict[str, Any]]:
    """Exactly one record per expected item holding the expected fields (`exact`: those fields and `$type`,
    nothing else), at a TID key, nothing else in the collection, and each document's `atproto` link naming
    its record. Returns the records."""
    listed = listed_over_http(pds_url, did, nsid)
    refs = Counter(record["value"].get("ref") for record in listed)
    duplicated = [ref for ref, n in refs.items() if n > 1]
    assert not duplicated, f"{nsid}: {len(duplicated)} items with more than one record, e.g. {duplicated[:3]}"
    got = {record["value"].get("ref"): record for record in listed}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"{nsid}: missing {missing[:3]}, extra {extra[:3]}"
    for ref, want in expected.items():
        value = got[ref]["value"]
        if exact:
            assert set(value) == {"$type", *want} and value["$type"] == nsid, (nsid, ref, sorted(value))
        plain = {key: v for key, v in want.items() if not isinstance(v, Thumbnail)}
        assert {key: value.get(key) for key in plain} == plain, (nsid, ref, value)
        checks = {key: v for key, v in want.items() if isinstance(v, Thumbnail)}
        for key, thumbnail in checks.items():
            thumbnail.verify(pds_url, did, value.get(key), (nsid, ref, key))
        if nsid == PAINTING and not checks:
            thumbnail = value.get("thumbnail") or {}
            assert thumbnail.get("mimeType") == "image/png" and 0 < thumbnail.get("size", 0) <= 1_048_576, ref
        rkey = got[ref]["uri"].rsplit("/", 1)[1]
        assert len(rkey) == 13 and set(rkey) <= TID_CHARS, (nsid, rkey)
    links = {str(doc["_id"]): doc.get("atproto") or {} for doc in db[collection].find({})}
    for ref, record in got.items():
        link = links.get(ref, {})
        assert (link.get("uri"), link.get("cid")) == (record["uri"], record["cid"]), (nsid, ref, link)
    return listed
