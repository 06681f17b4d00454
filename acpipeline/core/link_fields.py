"""The MongoDB link fields: where a synced document records the ATProto record it became
(`atproto: {rkey, uri, cid, syncedAt}`, and for tapes also `at: {rkey, uri, cid}`, which the platform's
tape code reads). The one place that reads, sets, finds and clears them: the extract, the record stage
and the wipe all go through here. Pure: MongoDB update documents as dicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from acpipeline.core.items import Link

LINK, LINK_FIELDS = "atproto", ("rkey", "uri", "cid", "syncedAt")
MIRROR, MIRROR_FIELDS = "at", ("rkey", "uri", "cid")


def link_of(doc: dict[str, Any], mirrored: bool = False) -> Link | None:
    """The record MongoDB says the document became, if any: `atproto`, else (for a type whose link is
    mirrored) `at`, the only link the platform's own tape code writes."""
    for name in (LINK, MIRROR) if mirrored else (LINK,):
        atproto = doc.get(name)
        if isinstance(atproto, dict) and isinstance(atproto.get("rkey"), str):
            # A `uri` or `cid` that is no string (a damaged document) is unknown, as a missing one is.
            uri, cid = atproto.get("uri"), atproto.get("cid")
            return Link(
                atproto["rkey"], uri if isinstance(uri, str) else None, cid if isinstance(cid, str) else None
            )
    return None


def _paths(mirrored: bool) -> list[str]:
    paths = [f"{LINK}.{name}" for name in LINK_FIELDS]
    return paths + ([f"{MIRROR}.{name}" for name in MIRROR_FIELDS] if mirrored else [])


def link_set(mirrored: bool, rkey: str, uri: str, cid: str, synced_at: datetime) -> dict[str, Any]:
    """The `$set` that links a document to its record."""
    values = {"rkey": rkey, "uri": uri, "cid": cid}
    fields: dict[str, Any] = {f"{LINK}.{name}": value for name, value in values.items()}
    fields[f"{LINK}.syncedAt"] = synced_at
    if mirrored:
        fields.update({f"{MIRROR}.{name}": value for name, value in values.items()})
    return {"$set": fields}


def link_unset(mirrored: bool) -> dict[str, Any]:
    """The `$unset` that clears every link field."""
    return {"$unset": {path: "" for path in _paths(mirrored)}}


def has_link(mirrored: bool) -> dict[str, Any]:
    """A filter for documents that carry any link field."""
    return {"$or": [{path: {"$exists": True}} for path in _paths(mirrored)]}
