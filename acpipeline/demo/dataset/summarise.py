"""The summary of a generated dataset, computed from its documents: counts, owners, the edge cases, and
the records a complete sync should write."""

from __future__ import annotations

import math
from typing import Any

from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.model import ART_GUEST_SUB, MEDIA_COLLECTIONS, WIP_STATUS, DatasetSummary


def _has_account(user: dict[str, Any]) -> bool:
    """What the sync reads as an account: a DID, a password and a handle, nested or in flat fields."""
    nested = user.get("atproto")
    atproto: dict[str, Any] = nested if isinstance(nested, dict) else {}
    return all(atproto.get(key) or user.get(f"atproto_{key}") for key in ("did", "password", "handle"))


def _in_progress(doc: dict[str, Any]) -> bool:
    """A painting the editor has not sealed yet: no item at all."""
    return doc.get("status") == WIP_STATUS and isinstance(doc.get("wip"), dict)


def _removed(doc: dict[str, Any]) -> bool:
    """Taken down by its owner: nuked, deleted, or a dead news post."""
    return doc.get("nuked") is True or doc.get("deleted") is True or doc.get("status") == "dead"


def _records_expected(b: Builder) -> dict[str, int]:
    """Per collection, the records a complete sync writes: live items (not nuked, deleted or dead) whose
    owner has an account (anonymous ones go to the art account; moods and news are never anonymous, and
    news copied from Bluesky is not ours) and that do not fail on purpose (missing or broken media, a news
    body over the lexicon's limit). Paintings in progress are no items; sealed ones are paintings, KidLisp
    projection rows are pieces (their platform records are adopted, not added)."""
    accounts = {doc["_id"] for doc in b.docs["users"] if _has_account(doc)}
    expected = {}
    for name in MEDIA_COLLECTIONS:
        count = 0
        for doc in b.docs[name]:
            if _removed(doc) or _in_progress(doc) or doc["_id"] in b.failing or "external" in doc:
                continue
            owner = doc.get("user") or (ART_GUEST_SUB if name not in ("moods", "news-posts") else None)
            count += owner in accounts
        expected[name] = count
    return expected


def _spread(values: list[int]) -> dict[str, int]:
    """Users with any, median, p90, p99 and max of per-user counts (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return {"users": 0, "with_any": 0, "median": 0, "p90": 0, "p99": 0, "max": 0}

    def rank(share: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]

    return {
        "users": len(ordered),
        "with_any": sum(v > 0 for v in ordered),
        "median": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": ordered[-1],
    }


def _items_per_user(b: Builder, owned: dict[str, dict[str, int]]) -> dict[str, dict[str, dict[str, int]]]:
    people = [doc for doc in b.docs["users"] if doc["_id"] != ART_GUEST_SUB]
    groups = {"all": people, "with_account": [doc for doc in people if _has_account(doc)]}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for group, docs in groups.items():
        counts = [owned.get(doc["_id"], {}) for doc in docs]
        out[group] = {name: _spread([c.get(name, 0) for c in counts]) for name in MEDIA_COLLECTIONS}
        out[group]["items"] = _spread([sum(c.values()) for c in counts])
    return out


def summarise(b: Builder, size: str, seed: int, elapsed: float) -> DatasetSummary:
    owned: dict[str, dict[str, int]] = {}
    anonymous: dict[str, int] = {}
    removed: dict[str, int] = {}
    for name in MEDIA_COLLECTIONS:
        anonymous[name] = 0
        removed[name] = 0
        for doc in b.docs[name]:
            user = doc.get("user")
            if user:
                owned.setdefault(user, {n: 0 for n in MEDIA_COLLECTIONS})
                owned[user][name] += 1
            else:
                anonymous[name] += 1
            if _removed(doc):
                removed[name] += 1
    art = next(u for u in b.users if u.sub == ART_GUEST_SUB)
    expected = _records_expected(b)
    return DatasetSummary(
        size=size,
        seed=seed,
        media_root=str(b.media_root),
        counts={name: len(docs) for name, docs in b.docs.items()},
        users=list(b.users),
        handles_with_accounts=[u.pds_handle for u in b.users if u.pds_handle],
        user_without_account=b.extra.get("user_without_account"),
        flat_fields_user=b.extra.get("flat_fields_user"),
        art_guest=art,
        owned_counts=owned,
        anonymous_counts=anonymous,
        removed_counts=removed,
        recordings=b.recordings,
        missing_image_painting=b.extra.get("missing_image_painting"),
        missing_zip_tape=b.extra.get("missing_zip_tape"),
        broken_zip_tape=b.extra.get("broken_zip_tape"),
        null_user_painting=b.extra.get("null_user_painting"),
        large_painting=b.extra.get("large_painting"),
        long_kidlisp=b.extra.get("long_kidlisp"),
        long_news_body=b.extra.get("long_news_body"),
        soundtrack_tape=b.extra.get("soundtrack_tape"),
        same_when_moods=b.extra.get("same_when_moods", []),
        wip_paintings=b.shapes["wip_paintings"],
        sealed_paintings=b.shapes["sealed_paintings"],
        kidlisp_projection_rows=b.shapes["kidlisp_projection_rows"],
        platform_tapes=b.shapes["platform_tapes"],
        platform_records=list(b.platform_records),
        orphan_kidlisp_records=b.shapes["orphan_kidlisp_records"],
        records_expected=expected,
        records_expected_total=sum(expected.values()),
        records_on_pds_total=sum(expected.values()) + len(b.shapes["orphan_kidlisp_records"]),
        items_per_user=_items_per_user(b, owned),
        elapsed_seconds=round(elapsed, 3),
    )
