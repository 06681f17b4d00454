"""Moods: short texts, never anonymous. The text field is `mood` (the platform's bulk sync wrote `text`)."""

from __future__ import annotations

from typing import Any

from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import MediaRules


class MoodRules(MediaRules):
    """Moods: one text per record, never anonymous, taken down by `deleted`."""

    name = "mood"
    nsid = "computer.aesthetic.mood"
    collection = "moods"
    source_fields = ("mood",)
    removed_flag = "deleted"
    may_be_anonymous = False

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"mood": required_text(doc, "mood")}

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        return {"mood": item.data["mood"], "when": iso_when(item.when), "ref": item.ref}
