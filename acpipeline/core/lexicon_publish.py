"""Publishing our lexicons as `com.atproto.lexicon.schema` records: which to create or update, what differs.

Pure: the documents are read from `lexicons/`, the published records are handed in. A schema record's key
is its NSID and its value the lexicon document itself with `$type` added; resolvers find the repository
through a DNS TXT record on the NSID's authority (`_lexicon.aesthetic.computer` for `computer.aesthetic.*`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from acpipeline.core.plan import Write

SCHEMA_NSID = "com.atproto.lexicon.schema"
NAMESPACE = "computer.aesthetic."  # published schemas under it with no local file are reported as extra


class _Absent:
    """One side of a difference that has no value at that path."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Difference:
    """One JSON path whose value differs between the published schema and ours."""

    path: str
    published: Any
    ours: Any

    def __str__(self) -> str:
        return f"{self.path}: published {_show(self.published)}, ours {_show(self.ours)}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "published": _jsonable(self.published), "ours": _jsonable(self.ours)}


def _show(value: Any) -> str:
    return repr(value) if value is ABSENT else json.dumps(value, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    return None if value is ABSENT else value


def schema_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The record value that publishes `doc`."""
    return {"$type": SCHEMA_NSID, **doc}


def json_diff(published: Any, ours: Any, path: str = "") -> list[Difference]:
    """Every path where the two JSON values differ (a bool is not an int); objects by key, arrays by index."""
    if isinstance(published, dict) and isinstance(ours, dict):
        found: list[Difference] = []
        for key in sorted(published.keys() | ours.keys()):
            child = f"{path}.{key}" if path else key
            found += json_diff(published.get(key, ABSENT), ours.get(key, ABSENT), child)
        return found
    if isinstance(published, list) and isinstance(ours, list):
        found = []
        for index in range(max(len(published), len(ours))):
            left = published[index] if index < len(published) else ABSENT
            right = ours[index] if index < len(ours) else ABSENT
            found += json_diff(left, right, f"{path}[{index}]")
        return found
    if type(published) is type(ours) and published == ours:
        return []
    return [Difference(path or "(document)", published, ours)]


def schema_diff(published: dict[str, Any], doc: dict[str, Any]) -> list[Difference]:
    """How a published schema record differs from our document, its `$type` aside."""
    return json_diff({k: v for k, v in published.items() if k != "$type"}, doc)


@dataclass
class LexiconPlan:
    """Ours against what one repository publishes: NSIDs to create, to update (with their differences),
    unchanged, and extra (published under our namespace, no longer ours: reported, never deleted)."""

    docs: dict[str, dict[str, Any]]
    create: list[str] = field(default_factory=list)
    update: dict[str, list[Difference]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.create or self.update or self.extra)

    def writes(self) -> list[Write]:
        """The applyWrites operations that make the published schemas ours (creates, then updates)."""
        creates = [Write("create", n, "new", value=schema_record(self.docs[n])) for n in self.create]
        updates = [
            Write("update", n, f"{len(d)} paths differ", value=schema_record(self.docs[n]))
            for n, d in self.update.items()
        ]
        return creates + updates

    def lines(self) -> list[str]:
        """One line per difference, for the operator."""
        out = [f"missing {n}: not published" for n in self.create]
        out += [f"changed {n}: {d}" for n, diffs in self.update.items() for d in diffs]
        out += [f"extra {n}: published, but no lexicon of ours has this id" for n in self.extra]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "create": self.create,
            "update": {n: [d.as_dict() for d in diffs] for n, diffs in self.update.items()},
            "unchanged": self.unchanged,
            "extra": self.extra,
        }


def plan_schemas(
    docs: dict[str, dict[str, Any]], published: dict[str, dict[str, Any]], namespace: str = NAMESPACE
) -> LexiconPlan:
    """Compare our documents (by NSID) with the published schema records (by rkey)."""
    plan = LexiconPlan(docs)
    for nsid in sorted(docs):
        if nsid not in published:
            plan.create.append(nsid)
        elif diffs := schema_diff(published[nsid], docs[nsid]):
            plan.update[nsid] = diffs
        else:
            plan.unchanged.append(nsid)
    plan.extra = sorted(n for n in published if n.startswith(namespace) and n not in docs)
    return plan


def authority_domain(nsid: str) -> str:
    """The domain that vouches for an NSID: its segments but the last, reversed."""
    return ".".join(reversed(nsid.split(".")[:-1]))


@dataclass(frozen=True)
class DnsRecord:
    """A TXT record the operator sets by hand, so resolvers find our schemas; `str()` is the instruction."""

    name: str
    value: str

    def __str__(self) -> str:
        return f'set DNS TXT {self.name} = "{self.value}"'


def dns_records(nsids: list[str], did: str) -> list[DnsRecord]:
    """One TXT record per authority of the NSIDs, pointing resolvers at `did`'s repository."""
    domains = sorted({authority_domain(nsid) for nsid in nsids})
    return [DnsRecord(f"_lexicon.{domain}", f"did={did}") for domain in domains]
