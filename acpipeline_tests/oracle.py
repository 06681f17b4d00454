"""An oracle that shares no code with what it judges: the expected records come from the MongoDB documents and
the spec's mapping table (`aesthetic-computer.md`, "Records": the fields, the short links, `when` as
JavaScript's `toISOString()`, `ref` as the `_id`'s 24 hex characters), and the PDS is read over plain HTTP
with the paging written here. Nothing from `acpipeline` is imported."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx

AC = "https://aesthetic.computer"
TID_CHARS = set("234567abcdefghijklmnopqrstuvwxyz")


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


def expected_moods(db, sub: str) -> dict[str, dict[str, Any]]:
    """ref -> the record: every mood of the user not deleted."""
    return {
        str(doc["_id"]): {"mood": doc["mood"], "when": js_iso(doc["when"]), "ref": str(doc["_id"])}
        for doc in db["moods"].find({"user": sub})
        if not doc.get("deleted")
    }


def expected_paintings(db, sub: str) -> dict[str, dict[str, Any]]:
    """ref -> the record's fields other than the thumbnail blob: every painting of the user not nuked."""
    return {
        str(doc["_id"]): {
            "slug": doc["slug"],
            "code": doc["code"],
            "imageUrl": f"{AC}/media/paintings/{doc['code']}",
            "when": js_iso(doc["when"]),
            "ref": str(doc["_id"]),
        }
        for doc in db["paintings"].find({"user": sub})
        if not doc.get("nuked")
    }


def assert_mirrored(
    pds_url: str, db, did: str, collection: str, nsid: str, expected: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Exactly one record per expected item holding the expected fields, at a TID key, nothing else in the
    collection, and each document's `atproto` link naming its record. Returns the records."""
    listed = listed_over_http(pds_url, did, nsid)
    refs = Counter(record["value"].get("ref") for record in listed)
    duplicated = [ref for ref, n in refs.items() if n > 1]
    assert not duplicated, f"{nsid}: {len(duplicated)} items with more than one record, e.g. {duplicated[:3]}"
    got = {record["value"].get("ref"): record for record in listed}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"{nsid}: missing {missing[:3]}, extra {extra[:3]}"
    for ref, want in expected.items():
        value = got[ref]["value"]
        assert {key: value.get(key) for key in want} == want, (nsid, ref, value)
        if nsid == "computer.aesthetic.painting":
            thumbnail = value.get("thumbnail") or {}
            assert thumbnail.get("mimeType") == "image/png" and 0 < thumbnail.get("size", 0) <= 1_048_576, ref
        rkey = got[ref]["uri"].rsplit("/", 1)[1]
        assert len(rkey) == 13 and set(rkey) <= TID_CHARS, (nsid, rkey)
    links = {str(doc["_id"]): doc.get("atproto") or {} for doc in db[collection].find({})}
    for ref, record in got.items():
        link = links.get(ref, {})
        assert (link.get("uri"), link.get("cid")) == (record["uri"], record["cid"]), (nsid, ref, link)
    return listed
