"""Pieces: published programs, identified by their slug."""

from __future__ import annotations

from typing import Any

from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import MediaRules


class PieceRules(MediaRules):
    """Pieces: a slug per record and no blobs, taken down by `nuked`."""

    name = "piece"
    nsid = "computer.aesthetic.piece"
    collection = "pieces"
    source_fields = ("slug",)

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"slug": required_text(doc, "slug")}

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        return {"slug": item.data["slug"], "when": iso_when(item.when), "ref": item.ref}
