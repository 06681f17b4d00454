"""Tapes: screen recordings, synced with an MP4 `video` blob (required) and a poster frame.

Most tapes are ZIPs of PNG frames that the platform's oven bakes into an MP4 (`mp4Status: "complete"`,
`mp4Url`); the blob stage uses that MP4 when it is sound and encodes the ZIP itself otherwise. Tapes from
the ac-native app (`kind: "mp4"`) are uploaded as MP4s and have no ZIP.
"""

from __future__ import annotations

from typing import Any

from acpipeline.core.cid import blob_ref
from acpipeline.core.items import Derived, Item, ItemProblem, iso_when, required_text
from acpipeline.core.media.base import AC, MediaRules, StoredFile

NATIVE_KIND = "mp4"  # `kind` of a tape uploaded as an MP4 (ac-native): no ZIP, the MP4 is the source
OVEN_COMPLETE = "complete"  # `mp4Status` once the oven's MP4 is uploaded


def _optional_text(doc: dict[str, Any], name: str) -> str | None:
    """A field the blob stage may use; anything but a non-empty string counts as absent."""
    value = doc.get(name)
    return value if isinstance(value, str) and value else None


class TapeRules(MediaRules):
    """Tapes: a required MP4 `video` blob and a poster frame, its MongoDB link also under `at.`; old records
    are recognised by their slug."""

    name = "tape"
    nsid = "computer.aesthetic.tape"
    collection = "tapes"
    source_fields = ("code", "slug", "bucket", "kind", "mp4Status", "mp4Url", "thumbnailUrl")
    blob_fields = ("video", "thumbnail")
    added_fields = ("zipUrl", "thumbnail")  # the platform's own records have neither
    mirrors_link = True  # the platform's tape code reads `at.rkey`
    work_per_item = 500.0  # a tape encode: about a second

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        native = doc.get("kind") == NATIVE_KIND
        mp4_url = _optional_text(doc, "mp4Url")
        if native and mp4_url is None:
            raise ItemProblem("a kind mp4 tape has no mp4Url, its only source")
        return {
            "code": required_text(doc, "code"),
            "slug": required_text(doc, "slug"),
            "bucket": _optional_text(doc, "bucket") if native else required_text(doc, "bucket"),
            "native": native,
            "mp4_status": _optional_text(doc, "mp4Status"),
            "mp4_url": mp4_url,
            "thumbnail_url": _optional_text(doc, "thumbnailUrl"),
        }

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        code = item.data["code"]
        value: dict[str, Any] = {
            "slug": item.data["slug"],
            "code": code,
            "acUrl": f"{AC}/!{code}",
            "when": iso_when(item.when),
            "ref": item.ref,
        }
        if not item.data["native"]:
            value["zipUrl"] = f"{AC}/media/tapes/{code}"  # the platform's short link, redirecting to the ZIP
        for name in self.blob_fields:
            blob = derived.blobs.get(name)
            if blob:
                value[name] = blob_ref(blob.cid, blob.mime_type, blob.size)
        return value

    def zip_file(self, item: Item) -> StoredFile:
        """The tape's ZIP of frames (none for an ac-native tape)."""
        return StoredFile("zip", item.data["bucket"], item.owner, item.data["slug"])

    def oven_thumbnail_key(self, item: Item) -> str:
        """Where the oven puts the poster frame in its bucket, beside the MP4 (`tapes/{code}.mp4`)."""
        return f"tapes/{item.data['code']}-thumb.jpg"

    def natural_key(self, value: dict[str, Any]) -> str | None:
        return value.get("slug") if isinstance(value.get("slug"), str) else None

    def item_natural_key(self, item: Item) -> str | None:
        return item.data.get("slug")
