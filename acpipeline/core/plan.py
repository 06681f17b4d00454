"""The diff planner: from what MongoDB wants and what the PDS holds now, the writes that converge them.

Pure: no network. Every write it plans is known to apply against the listing it was given (a create of an
existing key, an update or a delete of a missing one would fail the whole applyWrites call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from acpipeline.core.items import Derived, Item
from acpipeline.core.lexicon import Lexicon
from acpipeline.core.media.base import MediaRules, record_ref
from acpipeline.core.tid import decode_tid, is_tid, item_tid

Action = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Existing:
    """A record as listed from the PDS."""

    rkey: str
    cid: str
    value: dict[str, Any]


@dataclass(frozen=True)
class Desired:
    """A record MongoDB wants: its item and its full value (blobs as locally computed CIDs)."""

    item: Item
    value: dict[str, Any]


@dataclass(frozen=True)
class Write:
    """One planned applyWrites operation and its reason for the operator; `value` is None for a delete."""

    action: Action
    rkey: str
    reason: str
    ref: str | None = None  # the item behind it (None for a record no item claims)
    value: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "rkey": self.rkey, "ref": self.ref, "reason": self.reason}


@dataclass
class Plan:
    """One collection's writes in the order they can apply (deletes, updates, creates), and the rkey each
    wanted item keeps after them."""

    collection: str
    writes: list[Write] = field(default_factory=list)
    unchanged: dict[str, Existing] = field(default_factory=dict)  # ref -> the record kept as it is
    kept: dict[str, str] = field(default_factory=dict)  # ref -> rkey of every wanted item after the plan
    # Records that stand for no MongoDB document, kept because MongoDB is not the type's whole truth.
    not_in_mongodb: list[str] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for w in self.writes if w.action == action)

    @property
    def is_empty(self) -> bool:
        return not self.writes


def _age(rkey: str) -> tuple[int, str]:
    """Order records by creation: TIDs by their timestamp, anything else after them."""
    return (decode_tid(rkey)[0], rkey) if is_tid(rkey) else (2**63, rkey)


def differences(rules: MediaRules, want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """The fields in which a listed record differs from the desired value. One of the rules'
    `added_fields` that the record lacks is no difference: we add it only when we write anyway."""
    return sorted(
        k
        for k in set(want) | set(have)
        if want.get(k) != have.get(k) and not (k in rules.added_fields and k not in have)
    )


def claim_records(
    rules: MediaRules, existing: list[Existing], items: list[Item]
) -> tuple[dict[str, list[Existing]], list[Existing]]:
    """Which item each listed record stands for: its `ref`/`mongoId`, else MongoDB's link to its rkey, else
    the rules' natural key; a record none of these names is unclaimed. A record may claim a ref that no
    item of `items` has (its document is gone)."""
    by_ref = {item.ref for item in items}
    by_link: dict[str, str] = {item.link.rkey: item.ref for item in items if item.link}
    by_natural: dict[str, str] = {}
    for item in items:
        key = rules.item_natural_key(item) if item.problem is None else None
        if key is not None:
            by_natural.setdefault(key, item.ref)
    claimed: dict[str, list[Existing]] = {}
    unclaimed: list[Existing] = []
    for record in existing:
        ref = record_ref(record.value)
        if ref is None or ref not in by_ref:
            ref = (
                by_link.get(record.rkey)
                or (by_natural.get(nk) if (nk := rules.natural_key(record.value)) is not None else None)
                or ref
            )
        if ref is None:
            unclaimed.append(record)
        else:
            claimed.setdefault(ref, []).append(record)
    return claimed, unclaimed


def not_in_mongodb(rules: MediaRules, existing: list[Existing], items: list[Item]) -> list[Existing]:
    """The listed records that stand for no document of `items`: orphans, which the sync deletes where
    MongoDB is the whole truth and keeps where it is not."""
    claimed, unclaimed = claim_records(rules, existing, items)
    known = {item.ref for item in items}
    return unclaimed + [r for ref, records in claimed.items() if ref not in known for r in records]


def plan_writes(
    rules: MediaRules,
    desired: list[Desired],
    existing: list[Existing],
    items: list[Item],
) -> Plan:
    """Creates, updates and deletes that make `existing` equal `desired`.

    `items` are all the partition's items (also removed ones and ones that failed): a record whose item
    failed this run is left alone, never deleted for it. A record that stands for no item is deleted only
    where MongoDB is the type's whole truth (`rules.mongodb_is_whole_truth`); elsewhere it is kept.
    """
    plan = Plan(collection=rules.nsid)
    by_ref: dict[str, Item] = {item.ref: item for item in items}
    claimed, unclaimed = claim_records(rules, existing, items)
    taken = {record.rkey for record in existing}
    wanted = {d.item.ref: d for d in desired}

    for ref, records in sorted(claimed.items()):
        claimed_item = by_ref.get(ref)
        if ref in wanted:
            link = claimed_item.link.rkey if claimed_item and claimed_item.link else None
            records = sorted(records, key=lambda r: (r.rkey != link, _age(r.rkey)))
            keeper, duplicates = records[0], records[1:]
            for dup in duplicates:
                plan.writes.append(Write("delete", dup.rkey, f"duplicate of {keeper.rkey}", ref))
            want = wanted[ref].value
            diff = differences(rules, want, keeper.value)
            if diff:
                plan.writes.append(Write("update", keeper.rkey, "differs: " + ", ".join(diff), ref, want))
            else:
                plan.unchanged[ref] = keeper
            plan.kept[ref] = keeper.rkey
        elif claimed_item is not None and claimed_item.wanted:
            # A live item that could not be built this run (bad document, failed blob, invalid record)
            # keeps its record as it is: it is reported as failed, and stale content beats lost content.
            continue
        elif claimed_item is None and not rules.mongodb_is_whole_truth:
            plan.not_in_mongodb.extend(record.rkey for record in records)
        else:
            reason = "not in MongoDB" if claimed_item is None else f"item {claimed_item.removed}"
            for record in records:
                plan.writes.append(Write("delete", record.rkey, reason, ref))

    for record in unclaimed:
        if rules.mongodb_is_whole_truth:
            plan.writes.append(Write("delete", record.rkey, "record names no MongoDB item", None))
        else:
            plan.not_in_mongodb.append(record.rkey)

    for ref, new in sorted(wanted.items(), key=lambda kv: (kv[1].item.when, kv[0])):
        if ref in plan.kept:
            continue
        assert new.item.when is not None  # desired items are built from documents without a problem
        rkey = item_tid(new.item.when, ref, taken)
        taken.add(rkey)
        reason = "missing on the PDS" if new.item.link else "new"
        plan.writes.append(Write("create", rkey, reason, ref, new.value))
        plan.kept[ref] = rkey

    order = {"delete": 0, "update": 1, "create": 2}
    plan.writes.sort(key=lambda w: order[w.action])
    return plan


def build_desired(
    rules: MediaRules, items: list[Item], derived: dict[str, Derived], lexicon: Lexicon
) -> tuple[list[Desired], list[tuple[str, str]]]:
    """Record values of every wanted item that can be built and passes the lexicon; the others failed."""
    desired: list[Desired] = []
    failed: list[tuple[str, str]] = []
    for item in items:
        if not item.wanted:
            continue
        if item.problem:
            failed.append((item.ref, item.problem))
            continue
        got = derived.get(item.ref, Derived())
        if got.problem:
            failed.append((item.ref, got.problem))
            continue
        value = rules.value(item, got)
        violations = lexicon.violations(value)
        if violations:
            failed.append((item.ref, "invalid record: " + "; ".join(str(v) for v in violations)))
            continue
        desired.append(Desired(item, value))
    return desired, failed
