"""Tapes: screen recordings stored as ZIPs of PNG frames, synced with an MP4 `video` blob (required)."""

from __future__ import annotations

from typing import Any

from acpipeline.core.cid import blob_ref
from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import AC, MediaRules


class TapeRules(MediaRules):
    name = "tape"
    nsid = "computer.aesthetic.tape"
    collection = "tapes"
    source_fields = ("code", "slug", "bucket")
    blob_fields = ("video", "thumbnail")
    mirrors_link = True  # the platform's tape code reads `at.rkey`
    work_per_item = 500.0  # a tape encode: about a second

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "code": required_text(doc, "code"),
            "slug": required_text(doc, "slug"),
            "bucket": required_text(doc, "bucket"),
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
        if "zip_url" in derived.facts:
            value["zipUrl"] = derived.facts["zip_url"]
        for name in self.blob_fields:
            blob = derived.blobs.get(name)
            if blob:
                value[name] = blob_ref(blob.cid, blob.mime_type, blob.size)
        return value

    def natural_key(self, value: dict[str, Any]) -> str | None:
        return value.get("slug") if isinstance(value.get("slug"), str) else None

    def item_natural_key(self, item: Item) -> str | None:
        return item.data.get("slug")
