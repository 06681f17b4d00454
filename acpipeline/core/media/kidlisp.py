"""KidLisp: code snippets up to 50,000 characters, linked as https://aesthetic.computer/$code.

With the platform's own KidLisp store switched on (`store-kidlisp-datomic.mjs`), a new piece is saved there
and MongoDB's `kidlisp` gets only an identity row (`kidlisp-projection.mjs`: code, source, hash, when,
user), some of them late (`kidlisp-backfill.mjs`). The platform writes the record itself, without `ref`, and
keeps its rkey in its store. So MongoDB is not the whole truth: a record whose code MongoDB lacks is kept,
and a record is deleted only for a row that says `nuked: true`. The store has no per-piece removal; it
erases an account's pieces only when the account itself is deleted, PDS account included.
"""

from __future__ import annotations

from typing import Any

from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import AC, MediaRules


class KidlispRules(MediaRules):
    """KidLisp: MongoDB is not its whole truth (records it lacks are kept); old records are recognised by
    their code."""

    name = "kidlisp"
    nsid = "computer.aesthetic.kidlisp"
    collection = "kidlisp"
    source_fields = ("code", "source")
    removed_flag = "nuked"
    mongodb_is_whole_truth = False

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
