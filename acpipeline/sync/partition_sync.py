"""One partition converged on the PDS: its records planned and written (`records.py`), its check judged
from the repository the sync left, and the events and mark that wait for its links: the materialization
(its `PartitionOutcome`, or an observation in a dry run), the check, the convergence mark."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    Config,
    MetadataValue,
)

from acpipeline.core.items import Derived, Item
from acpipeline.core.media import MEDIA
from acpipeline.core.verdict import judge
from acpipeline.settings import acpipeline_home
from acpipeline.sync.account_turns import account_turn
from acpipeline.sync.converged import Proof
from acpipeline.sync.extract import Account
from acpipeline.sync.links import LinkWriter
from acpipeline.sync.marks import ConvergedState, Mark
from acpipeline.sync.outcome import PartitionOutcome, SyncReport
from acpipeline.sync.records import RecordSync
from acpipeline.sync.repo_reads import RepoReads, existing_in


@dataclass
class PartitionSource:
    """One partition's items as this run read them, and whether it is already proven converged."""

    handle: str
    media: str
    account: Account | None
    items: list[Item]
    fingerprint: str
    proof: Proof | None = None
    rev: str | None = None  # the account's latest repository revision as this run read it (listRepos)

    @property
    def key(self) -> str:
        return f"{self.handle}|{self.media}"


class SyncConfig(Config):
    """How a sync run writes: as usual, as a dry run that only plans, or strictly (any failed item fails its
    partition)."""

    dry_run: bool = False
    """Compute and report the plan (each write with its reason); write nothing to the PDS or MongoDB."""
    strict: bool = False
    """Fail a partition when any of its items failed (by default they are reported and the rest syncs)."""


CHECK = AssetCheckSpec(
    "pds_holds_desired_records",
    asset="atproto_records",
    description="The account's collection holds exactly one record per synced item, with its desired "
    "value, as the PDS holds it after the sync: read again, or (after the sync's writes) the plan's read "
    "with the commits the PDS applied onto it and the record CIDs it answered. For a partition proven "
    "converged: as its last clean sync left it, with nothing changed since.",
)


def _source_metadata(source: PartitionSource) -> dict[str, Any]:
    """The partition's source figures, recorded on its records materialization."""
    removed = sum(1 for i in source.items if not i.wanted)
    return {
        "items": len(source.items),
        "removed": removed,
        "bad_documents": sum(1 for i in source.items if i.problem and i.wanted),
        "owner": (source.account.owner or "anonymous") if source.account else "no account",
    }


def _blob_metadata(derived: dict[str, Derived]) -> dict[str, Any]:
    """The partition's blob figures, recorded on its records materialization."""
    return {
        "blobs": sum(len(d.blobs) for d in derived.values()),
        "blob_failures": sum(1 for d in derived.values() if d.problem),
        "blob_bytes": sum(b.size for d in derived.values() for b in d.blobs.values()),
    }


def proven_partition(
    context: AssetExecutionContext, source: PartitionSource, dry_run: bool
) -> SyncedPartition:
    """A proven-converged partition: a materialization saying so (backfills and the UI count it as done;
    an observation in a dry run), and its check carried over from the sync that made the mark. An empty one
    is marked, so later runs prove it from the mark instead of asking describeRepo again."""
    proof = source.proof
    assert proof is not None and source.account is not None
    n = proof.desired
    event = AssetObservation if dry_run else AssetMaterialization
    materialization = event(
        asset_key=context.asset_key,
        partition=source.key,
        metadata={
            **PartitionOutcome.proven(n, proof.not_in_mongodb).metadata(),
            "proof": "empty on both sides" if proof.empty else "source unchanged since its last clean sync, "
            "no commit to the collection since",
            "repo_rev": proof.rev,
            "did": source.account.did if source.account else "",
            "source_fingerprint": proof.fingerprint,
        },
    )  # fmt: skip
    check = AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=CHECK.name,
        passed=True,
        partition=source.key,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "desired": n,
            "on_pds": n + proof.not_in_mongodb,
            "not_in_mongodb": proof.not_in_mongodb,
            "proven_converged": True,
            "repo_rev": proof.rev,
        },
    )
    synced = SyncedPartition([materialization, check], 0)
    if proof.empty and not dry_run:
        synced.mark = (source.account.did, proof.rev, source.media, Mark(proof.fingerprint, 0))
    return synced


@dataclass
class SyncedPartition:
    """A synced partition waiting for its links to be written: its events, and the mark it earned."""

    events: list[AssetMaterialization | AssetObservation | AssetCheckEvaluation]
    items_failed: int
    mark: tuple[str, str, str, Mark] | None = None  # (did, rev, media, mark)
    deferred_until: float | None = None  # the PDS's rate limit stopped it until then (epoch seconds)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (level, message) for the run's log


def sync_partition(
    context: AssetExecutionContext,
    config: SyncConfig,
    reads: RepoReads,
    state: ConvergedState,
    source: PartitionSource,
    derived: dict[str, Derived],
    links: LinkWriter,
) -> SyncedPartition:
    """Converge one partition: its materialization (or dry-run observation) and check, and the mark it earns
    once its links are written."""
    account = source.account
    assert account is not None
    started = time.monotonic()

    def advanced(previous: str, new: str) -> None:
        state.advance(account.did, previous, new, source.media)

    client = reads.client
    sync = RecordSync(
        client,
        MEDIA[source.media],
        account,
        source.items,
        derived,
        on_commit=advanced,
        turns=lambda: account_turn(acpipeline_home() / "locks", account.did),
        links=links,
        reads=reads,
        rev=source.rev,
    )
    report = sync.run(dry_run=config.dry_run)
    outcome = report.outcome(time.monotonic() - started)
    metadata = {
        **outcome.metadata(),
        **_records_metadata(report, client.url),
        **_source_metadata(source),
        **_blob_metadata(derived),
        "source_fingerprint": source.fingerprint,
    }
    if outcome.deferred_until is not None:
        return _deferred(context, source, report, outcome.deferred_until, metadata, config.dry_run)
    check, rev = holds_desired(context, reads, sync, source.key)
    if config.dry_run:
        # An observation, not a materialization: a dry run must not make the partition look synced.
        observation = AssetObservation(asset_key=context.asset_key, partition=source.key, metadata=metadata)
        note = (logging.INFO, f"dry run of {source.key}: {len(report.planned)} writes planned")
        return SyncedPartition([observation, check], len(report.failed), notes=[note])
    event = AssetMaterialization(asset_key=context.asset_key, partition=source.key, metadata=metadata)
    synced = SyncedPartition([event, check], len(report.failed))
    if check.passed and not report.failed:
        mark = Mark(source.fingerprint, report.desired, report.not_in_mongodb)
        synced.mark = (account.did, rev, source.media, mark)
    else:
        state.unmark(account.did, source.media)
    return synced


def _deferred(
    context: AssetExecutionContext,
    source: PartitionSource,
    report: SyncReport,
    until: str,
    metadata: dict[str, Any],
    dry_run: bool,
) -> SyncedPartition:
    """The PDS's rate limit stopped the partition: what was written is linked, the rest waits until the
    window resets. Materialized with `status: deferred` (its history says how far it got) and a failed check
    that names the time, without asking the PDS again; no convergence mark, so the next run plans it, and
    the run is tagged for the sensor to request it again after that time."""
    metadata["status"] = "deferred"
    note = f"{source.key}: the PDS's rate limit defers {report.deferred_writes or 'its'} writes until {until}"
    kind = AssetObservation if dry_run else AssetMaterialization
    event = kind(asset_key=context.asset_key, partition=source.key, metadata=metadata)
    check = AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=CHECK.name,
        passed=False,
        partition=source.key,
        severity=AssetCheckSeverity.WARN,
        metadata={"deferred_until": until, "deferred_writes": report.deferred_writes},
    )
    until_s = None if dry_run else report.deferred_until
    return SyncedPartition(
        [event, check], len(report.failed), deferred_until=until_s, notes=[(logging.WARNING, note)]
    )


def holds_desired(
    context: AssetExecutionContext, reads: RepoReads, sync: RecordSync, key: str
) -> tuple[AssetCheckEvaluation, str]:
    """Exactly one record per synced item, with the desired value (`core/verdict.py`), judged from the
    repository as the sync's own commits left it (`RecordSync.state_after`: kept for later partitions, as a
    read would be), else read again after the sync; and the revision it was judged at."""
    after = sync.state_after()
    if after is None:
        after, judged_from = reads.now(sync.account.did), "read after the sync"
    else:
        reads.keep(after)
        judged_from = "the sync's commits, chained from its read"
    rev, listed = after.rev, existing_in(after, sync.rules.nsid)
    desired = {d.item.ref: d.value for d in sync.desired}
    verdict = judge(sync.rules, desired, {ref for ref, _ in sync.report.failed}, listed)
    evaluation = AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=CHECK.name,
        passed=verdict.passed,
        partition=key,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "on_pds": verdict.on_pds,
            "desired": verdict.desired,
            "missing": len(verdict.missing),
            "duplicated": len(verdict.duplicated),
            "differing": len(verdict.differing),
            "unexpected": len(verdict.unexpected),
            "not_in_mongodb": verdict.not_in_mongodb,
            "problems": MetadataValue.json(verdict.problems()),
            "judged_from": judged_from,
            "rev": rev,
        },
    )
    return evaluation, rev


def _records_metadata(report: SyncReport, pds_url: str) -> dict[str, Any]:
    """Where to see the partition's records."""
    records_url = (
        f"{pds_url.rstrip('/')}/xrpc/com.atproto.repo.listRecords?repo={report.did}"
        f"&collection={MEDIA[report.media].nsid}"
    )
    return {"did": report.did, "records": MetadataValue.url(records_url)}
