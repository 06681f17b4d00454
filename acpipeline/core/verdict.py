"""The asset check's judgement of a partition: what the PDS holds, listed after the sync, against the record
values MongoDB wants. Written apart from the planner on purpose (no claim rules, no `differences`): a planner
bug must show here as a failed check, not be repeated by it. Pure: no network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from acpipeline.core.media import MediaRules
from acpipeline.core.plan import Existing  # the listed record's shape only: none of the planner's rules


@dataclass(frozen=True)
class Verdict:
    """The check's finding for one partition: the records missing, duplicated, differing or unexpected, and
    the counts behind them."""

    on_pds: int
    desired: int
    missing: list[str] = field(default_factory=list)  # refs of desired items with no record naming them
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # ref -> the rkeys of its records
    differing: dict[str, list[str]] = field(default_factory=dict)  # ref -> the fields that differ
    unexpected: list[str] = field(default_factory=list)  # rkeys of records that name no item of ours
    not_in_mongodb: int = 0  # records naming no item, kept where MongoDB is not the type's whole truth

    @property
    def passed(self) -> bool:
        return not (self.missing or self.duplicated or self.differing or self.unexpected)

    def problems(self, most: int = 10) -> list[str]:
        """One line per problem, the first `most` of them: what operators read on a failed check."""
        lines = [f"{ref}: no record on the PDS" for ref in self.missing]
        lines += [f"{ref}: {len(keys)} records ({', '.join(keys)})" for ref, keys in self.duplicated.items()]
        lines += [f"{ref}: differs in {', '.join(names)}" for ref, names in self.differing.items()]
        lines += [f"record {rkey}: names no item MongoDB has" for rkey in self.unexpected]
        return lines[:most]


def _named_ref(value: dict[str, Any]) -> str | None:
    """The item a record names: `ref`, or `mongoId` on the oldest mood records."""
    for name in ("ref", "mongoId"):
        if isinstance(value.get(name), str):
            return str(value[name])
    return None


def _fields_differing(rules: MediaRules, want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """Field by field; a field we add only when writing (`added_fields`) may be absent from a record."""
    names = []
    for name in sorted(set(want) | set(have)):
        if name in have and have[name] == want.get(name):
            continue
        if name not in have and name not in want:
            continue
        if name not in have and name in rules.added_fields:
            continue
        names.append(name)
    return names


def judge(
    rules: MediaRules, desired: dict[str, dict[str, Any]], failed: set[str], listed: list[Existing]
) -> Verdict:
    """Exactly one record per desired item (`desired`: ref -> value), holding that value; no record that
    names nothing MongoDB has, except where MongoDB is not the type's whole truth. A record of an item that
    failed this run (`failed`) is left as it was, so it is neither missing nor unexpected."""
    by_ref: dict[str | None, list[Existing]] = {}
    for record in listed:
        by_ref.setdefault(_named_ref(record.value), []).append(record)
    known = set(desired) | failed
    missing = [ref for ref in desired if ref not in by_ref]
    duplicated = {
        ref: sorted(r.rkey for r in records)
        for ref, records in by_ref.items()
        if ref in known and len(records) > 1
    }
    differing = {}
    for ref, want in desired.items():
        for record in by_ref.get(ref, []):
            names = _fields_differing(rules, want, record.value)
            if names:
                differing[ref] = names
    strays = sorted(r.rkey for ref, records in by_ref.items() if ref not in known for r in records)
    kept = not rules.mongodb_is_whole_truth
    return Verdict(
        on_pds=len(listed),
        desired=len(desired),
        missing=missing,
        duplicated=duplicated,
        differing=differing,
        unexpected=[] if kept else strays,
        not_in_mongodb=len(strays) if kept else 0,
    )
