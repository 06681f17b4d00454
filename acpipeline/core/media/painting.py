"""Paintings: pixel-art PNGs, a 512x512 thumbnail blob, and a recording link when the ZIP exists.

The platform's painting editor (`painting-wips.mjs`) keeps a painting in progress in `paintings` as
`status: "wip"`, `slug: "wip/<id>"` and a `wip` sub-document (the editor's capability hash and the id of its
saved state among them), rewritten on every save. It is not an item until "done" seals it (`status: "done"`,
the real slug, the PNG in storage); a document without `status` is a finished painting of the classic kind.
Nothing of `wip` is ever read: it is the editor's, not the record's.
"""

from __future__ import annotations

from typing import Any

from acpipeline.core.cid import blob_ref
from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import AC, MediaRules, StoredFile

IN_PROGRESS = "wip"  # `status` of a painting the editor has not sealed yet


class PaintingRules(MediaRules):
    """Paintings: a thumbnail blob made from the PNG; work in progress is no item; old records are recognised
    by their code."""

    name = "painting"
    nsid = "computer.aesthetic.painting"
    collection = "paintings"
    source_fields = ("code", "slug", "bucket", "status")
    blob_fields = ("thumbnail",)
    work_per_item = 6.0  # a fetch, a thumbnail and an upload besides the record

    def in_progress(self, doc: dict[str, Any]) -> bool:
        return doc.get("status") == IN_PROGRESS

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        slug = required_text(doc, "slug")
        image_slug, _, recording_slug = slug.partition(":")
        return {
            "code": required_text(doc, "code"),
            "slug": slug,
            "bucket": required_text(doc, "bucket"),
            "image_slug": image_slug,
            "recording_slug": recording_slug or image_slug,
        }

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        code = item.data["code"]
        value: dict[str, Any] = {
            "slug": item.data["slug"],
            "code": code,
            "imageUrl": f"{AC}/media/paintings/{code}",
            "acUrl": f"{AC}/#{code}",
            "when": iso_when(item.when),
            "ref": item.ref,
        }
        if derived.facts.get("recording"):
            value["recordingUrl"] = f"{AC}/media/paintings/{code}.zip"
        thumb = derived.blobs.get("thumbnail")
        if thumb:
            value["thumbnail"] = blob_ref(thumb.cid, thumb.mime_type, thumb.size)
        return value

    def image_file(self, item: Item) -> StoredFile:
        """The painting's PNG: a user's under their folder by its full slug, a guest's by its image slug."""
        if item.owner:
            return StoredFile("image", item.data["bucket"], item.owner, item.data["slug"])
        return StoredFile("guest_image", item.data["bucket"], None, item.data["image_slug"])

    def recording_file(self, item: Item) -> StoredFile:
        """The recording ZIP, which may or may not exist (the part of the slug after `:`, or all of it)."""
        return StoredFile("zip", item.data["bucket"], item.owner, item.data["recording_slug"])

    def natural_key(self, value: dict[str, Any]) -> str | None:
        return value.get("code") if isinstance(value.get("code"), str) else None

    def item_natural_key(self, item: Item) -> str | None:
        return item.data.get("code")
