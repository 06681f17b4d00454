"""What one partition's sync did, in one typed form: the record stage writes it as the partition's
materialization metadata, and the command line reads it back from the run's events and prints it as a row.
The counts are named once, here. Dagster is imported where the metadata is made or read: the command line
names the counts before it loads Dagster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# What a sync of a partition counts, in the order the command line's table shows them.
COUNTS = ("desired", "created", "updated", "deleted", "unchanged", "not_in_mongodb", "failed")
# What the sync sent to do it (none for a partition proven converged).
TRAFFIC = ("blobs_uploaded", "blob_bytes_uploaded", "commits", "mongo_updates", "replans")
# Failed items and planned writes past these are left out of a materialization (its size is bounded).
SHOWN_AT_MOST = 500


@dataclass(frozen=True)
class PartitionOutcome:
    """What one partition's sync did, by count; it travels as the materialization's metadata and is read back
    from it."""

    desired: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    not_in_mongodb: int = 0  # records kept that stand for no MongoDB document (MongoDB not the whole truth)
    failed: int = 0
    blobs_uploaded: int = 0
    blob_bytes_uploaded: int = 0
    commits: int = 0
    mongo_updates: int = 0
    replans: int = 0
    duration_s: float | None = None  # None when no sync ran (proven converged)
    proven_converged: bool = False
    deferred_until: str | None = None  # ISO time: the PDS's rate limit stopped the sync until then
    deferred_writes: int = 0  # the writes it stopped before
    failed_items: tuple[tuple[str, str], ...] = ()  # (ref, reason), at most SHOWN_AT_MOST
    plan: tuple[dict[str, Any], ...] = ()  # the planned writes with their reasons, at most SHOWN_AT_MOST

    @classmethod
    def proven(cls, desired: int, not_in_mongodb: int) -> PartitionOutcome:
        """A partition proven converged: nothing was run, everything is unchanged."""
        return cls(desired=desired, unchanged=desired, not_in_mongodb=not_in_mongodb, proven_converged=True)

    @property
    def written(self) -> int:
        return self.created + self.updated + self.deleted

    def metadata(self) -> dict[str, Any]:
        """The materialization's metadata for it (a proven partition's has no run figures)."""
        from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        out["proven_converged"] = self.proven_converged
        if self.deferred_until is not None:
            out.update(deferred_until=self.deferred_until, deferred_writes=self.deferred_writes)
        if self.proven_converged:
            return out
        out.update({name: getattr(self, name) for name in TRAFFIC})
        out["duration_s"] = round(self.duration_s or 0.0, 2)
        out["failed_items"] = MetadataValue.table(
            records=[TableRecord({"ref": ref, "reason": reason[:500]}) for ref, reason in self.failed_items],
            schema=TableSchema(columns=[TableColumn("ref", "string"), TableColumn("reason", "string")]),
        )
        out["plan"] = MetadataValue.json(list(self.plan))
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> PartitionOutcome:
        """Read back from a materialization's (or a dry run's observation's) metadata."""
        from dagster import TableMetadataValue

        plain: dict[str, Any] = {
            key: [record.data for record in value.records]
            if isinstance(value, TableMetadataValue)
            else getattr(value, "value", value)
            for key, value in metadata.items()
        }
        return cls(
            **{name: int(plain.get(name) or 0) for name in (*COUNTS, *TRAFFIC, "deferred_writes")},
            duration_s=plain.get("duration_s"),
            proven_converged=bool(plain.get("proven_converged")),
            deferred_until=plain.get("deferred_until"),
            failed_items=tuple((row["ref"], row["reason"]) for row in plain.get("failed_items") or ()),
            plan=tuple(plain.get("plan") or ()),
        )

    def row(self, dry_run: bool) -> dict[str, Any]:
        """The command line's row (`--json` prints it as is); the plan only for a dry run."""
        return {
            **{name: getattr(self, name) for name in COUNTS},
            "duration_s": self.duration_s,
            "failed_items": [{"ref": ref, "reason": reason} for ref, reason in self.failed_items],
            "planned": list(self.plan) if dry_run else [],
            "proven_converged": self.proven_converged,
            "deferred_until": self.deferred_until,
        }


@dataclass
class SyncReport:
    """What a sync of one partition counts as it goes (`records.RecordSync`); `outcome` freezes it."""

    handle: str
    media: str
    did: str
    desired: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    not_in_mongodb: int = 0  # records kept that stand for no MongoDB document (MongoDB not the whole truth)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason)
    blobs_uploaded: int = 0
    blob_bytes_uploaded: int = 0
    commits: int = 0
    mongo_updates: int = 0
    planned: list[dict[str, Any]] = field(default_factory=list)  # the plan's writes, with reasons
    replans: int = 0
    # The PDS's rate limit stopped the run before these writes, until then (epoch seconds); the next run
    # after it plans them again from the PDS.
    deferred_until: float | None = None
    deferred_writes: int = 0

    def outcome(self, duration_s: float) -> PartitionOutcome:
        """What the sync did, for its materialization: the counts it kept, with the failed items counted."""
        stop = self.deferred_until
        until = None if stop is None else datetime.fromtimestamp(stop, UTC).isoformat(timespec="seconds")
        names = [name for name in (*COUNTS, *TRAFFIC, "deferred_writes") if name != "failed"]  # a list here
        kept = {name: getattr(self, name) for name in names}
        return PartitionOutcome(
            **kept,
            failed=len(self.failed),
            duration_s=duration_s,
            deferred_until=until,
            failed_items=tuple(self.failed[:SHOWN_AT_MOST]),
            plan=tuple(self.planned[:SHOWN_AT_MOST]),
        )
