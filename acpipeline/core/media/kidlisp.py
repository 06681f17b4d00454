"""KidLisp: code snippets up to 50,000 characters, linked as https://aesthetic.computer/$code."""

from __future__ import annotations

from typing import Any

from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import AC, MediaRules


class KidlispRules(MediaRules):
    name = "kidlisp"
    nsid = "computer.aesthetic.kidlisp"
    collection = "kidlisp"
    source_fields = ("code", "source")
    removed_flag = "nuked"

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        # Over-long sources are rejected by the lexicon check, never truncated: a cut program is a
        # different program.
        return {"code": required_text(doc, "code"), "source": required_text(doc, "source")}

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        code = item.data["code"]
        return {
            "source": item.data["source"],
            "code": code,
            "acUrl": f"{AC}/${code}",
            "when": iso_when(item.when),
            "ref": item.ref,
        }

    def natural_key(self, value: dict[str, Any]) -> str | None:
        return value.get("code") if isinstance(value.get("code"), str) else None

    def item_natural_key(self, item: Item) -> str | None:
        return item.data.get("code")
