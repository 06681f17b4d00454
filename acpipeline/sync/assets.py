"""The three stages as assets: source items -> media blobs -> ATProto records.

A run covers one partition or a range of them (a backfill's `BackfillPolicy.multi_run`, or the schedule's
and the sensor's range requests): each stage works over `context.partition_keys`, and every partition gets
its own materialization, metadata and check result. A partition that fails fails alone: the others of the
run are recorded as materialized, then the record stage raises naming the failed ones, which Dagster and
its backfills then show as failed."""

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    BackfillPolicy,
    BetaWarning,
    Config,
    DagsterEvent,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from acpipeline.core.items import Derived, Item
from acpipeline.core.media import MEDIA
from acpipeline.core.verdict import judge
from acpipeline.dagster_compat import log_as_batch
from acpipeline.errors import OperatorError
from acpipeline.resources.mongo import MongoResource
from acpipeline.resources.pds import PdsClient, PdsResource
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import acpipeline_home
from acpipeline.sync.blobs import LEXICON_VIDEO_MAX, derive_blobs
from acpipeline.sync.cache import DerivedCache
from acpipeline.sync.converged import ConvergedState, Mark, Proof, latest_revs, prove, source_fingerprint
from acpipeline.sync.deferral import record_deferred
from acpipeline.sync.extract import Account, extract_owners, find_accounts
from acpipeline.sync.links import LinkWriter
from acpipeline.sync.outcome import PartitionOutcome
from acpipeline.sync.partitions import FULL_TAG, PARTITIONS_PER_RUN, keys_of_run, sync_partitions
from acpipeline.sync.pre_upload import PreUploader, PreUploadStats, never_linked, not_wanted_in
from acpipeline.sync.records import RecordSync, SyncReport
from acpipeline.sync.repo_reads import RepoReads, existing_in

# BackfillPolicy is beta in Dagster 1.13.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")

GROUP = "sync"
POOL = "pds_writes"
# A backfill puts up to this many partitions (of one media type) in one run: a process start-up and a run's
# bookkeeping per hundred partitions instead of per partition; the pool still caps concurrent PDS writers.
BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)
# Accounts the record stage syncs at once: their partitions' round trips overlap. Each has one write in
# flight, so the PDS sees at most this many writers per step in the pool.
ACCOUNTS_AT_ONCE = 4


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
    dry_run: bool = False
    """Compute and report the plan (each write with its reason); write nothing to the PDS or MongoDB."""
    strict: bool = False
    """Fail a partition when any of its items failed (by default they are reported and the rest syncs)."""


def _run_metadata(sources: dict[str, PartitionSource]) -> dict[str, Any]:
    """What a source or blob stage materialization records: figures of its whole run. Each partition's own
    figures go on its `atproto_records` materialization (`context.add_asset_metadata` per partition costs
    ~13 ms at the platform's size: a second and a half per run of 100)."""
    return {
        "partitions_in_run": len(sources),
        "items_in_run": sum(len(s.items) for s in sources.values()),
        "proven_converged_in_run": sum(1 for s in sources.values() if s.proof),
    }


@asset(
    partitions_def=sync_partitions,
    group_name=GROUP,
    backfill_policy=BACKFILL,
    description="The owner's MongoDB documents of one media type, normalised into items (removed ones "
    "kept and marked: they drive deletes). A partition whose source and repository are unchanged since "
    "its last clean sync is marked proven converged here, and the later stages skip it.",
)
def source_items(
    context: AssetExecutionContext, mongo: MongoResource, pds: PdsResource
) -> Output[dict[str, PartitionSource]]:
    keys = keys_of_run(context.partition_keys)
    db = mongo.db()
    accounts = find_accounts(db).by_handle
    sources: dict[str, PartitionSource] = {}
    for media in dict.fromkeys(media for _, media in keys):
        handles = [h for h, m in keys if m == media]
        owners = [accounts[h].owner for h in handles if h in accounts]
        found = extract_owners(db, MEDIA[media], owners)
        for handle in handles:
            account = accounts.get(handle)
            items = found[account.owner] if account else []
            source = PartitionSource(handle, media, account, items, source_fingerprint(items))
            sources[source.key] = source
    known = {s.key: s for s in sources.values() if s.account}
    if known:
        client = pds.client()
        revs = latest_revs(client, {s.account.did for s in known.values() if s.account})
        for source in known.values():
            source.rev = revs.get(source.account.did) if source.account else None
        if context.run.tags.get(FULL_TAG) != "true":
            state, reads = ConvergedState(acpipeline_home()), RepoReads(client, acpipeline_home())
            try:
                proofs = prove(
                    client,
                    state,
                    {(s.handle, s.media): (s.account.did, s.items) for s in known.values() if s.account},
                    revs,
                    reads.collections_at,
                )
            finally:
                state.close()
                reads.close()
            for (handle, media), proof in proofs.items():
                sources[f"{handle}|{media}"].proof = proof
    metadata = _run_metadata(sources)
    proven = metadata["proven_converged_in_run"]
    context.log.info(f"{len(sources)} partitions read, {proven} proven converged")
    return Output(sources, metadata=metadata)


def _source_metadata(source: PartitionSource) -> dict[str, Any]:
    """The partition's source figures, recorded on its records materialization."""
    removed = sum(1 for i in source.items if not i.wanted)
    return {
        "items": len(source.items),
        "removed": removed,
        "bad_documents": sum(1 for i in source.items if i.problem and i.wanted),
        "owner": (source.account.owner or "anonymous") if source.account else "no account",
    }


@asset(
    partitions_def=sync_partitions,
    group_name=GROUP,
    backfill_policy=BACKFILL,
    description="Blobs derived from the items: 512x512 painting thumbnails (with recording detection) and "
    "tape MP4s (the oven's, else encoded from the ZIP) with their poster frame; cached by content under "
    "ACPIPELINE_HOME.",
)
def media_blobs(
    context: AssetExecutionContext,
    source_items: dict[str, PartitionSource],
    storage: StorageResource,
    pds: PdsResource,
) -> Output[dict[str, dict[str, Derived]]]:
    todo = [s for s in source_items.values() if s.account and not s.proof]
    derived: dict[str, dict[str, Derived]] = {s.key: {} for s in source_items.values()}
    metadata = _run_metadata(source_items)
    cache = DerivedCache(acpipeline_home())
    # New items' blobs go to the PDS as soon as they are derived, outside the record stage's pool
    # (`sync/pre_upload.py`); never in a dry run.
    skipped = not_wanted_in(context.run)
    uploader = None
    with_blobs = [(s.account, s.items) for s in todo if MEDIA[s.media].blob_fields]
    if skipped is None and (eligible := never_linked(with_blobs)):
        uploader = PreUploader(pds.client(), eligible)
    try:
        for media in dict.fromkeys(s.media for s in todo):
            group = [s for s in todo if s.media == media]
            max_video = LEXICON_VIDEO_MAX
            if media == "tape" and any(i.wanted for s in group for i in s.items):
                limit = pds.client().describe_server().get("blobUploadLimit")
                max_video = min(LEXICON_VIDEO_MAX, int(limit)) if limit else LEXICON_VIDEO_MAX
            # All the run's partitions of a media type at once: the derive threads stay busy across owners.
            started = time.monotonic()
            items = [i for s in group for i in s.items]
            on_derived = uploader.submit if uploader else None
            everything, stats = derive_blobs(items, media, storage, cache, max_video, on_derived=on_derived)
            seconds = time.monotonic() - started
            context.log.info(
                f"{media}: {stats.derived} derived, {stats.cached} from cache, {stats.failed} failed "
                f"in {seconds:.2f} s"
            )
            figures = (("derived", stats.derived), ("from_cache", stats.cached), ("seconds", seconds))
            for name, value in figures:
                metadata[f"{name}_in_run"] = round(metadata.get(f"{name}_in_run", 0) + value, 2)
            for source in group:
                derived[source.key] = {i.ref: everything[i.ref] for i in source.items if i.ref in everything}
            if stats.tapes:
                metadata.update(_tape_metadata(stats.tapes))
        if uploader is not None:
            uploaded = uploader.finish()
            for by_ref in derived.values():
                for ref, got in by_ref.items():
                    if ref in uploaded:
                        by_ref[ref] = replace(got, uploaded=uploaded[ref])
    finally:
        if uploader is not None:
            uploader.close()
    pre = uploader.stats if uploader else PreUploadStats(skipped=skipped)
    for message in uploader.messages if uploader else []:
        context.log.warning(message)
    if uploader is not None:
        context.log.info(f"{pre.blobs} blobs ({pre.bytes} bytes) uploaded ahead of the record stage")
    metadata.update(pre.metadata())
    return Output(derived, metadata=metadata)


def _blob_metadata(derived: dict[str, Derived]) -> dict[str, Any]:
    """The partition's blob figures, recorded on its records materialization."""
    return {
        "blobs": sum(len(d.blobs) for d in derived.values()),
        "blob_failures": sum(1 for d in derived.values() if d.problem),
        "blob_bytes": sum(b.size for d in derived.values() for b in d.blobs.values()),
    }


def _tape_metadata(tapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each tape's source (`oven`, `zip`, `native`) and why it fell back; the figures of the run's encodes."""
    encoded = [t for t in tapes if "encode_s" in t]
    video_s = sum(t["duration_s"] for t in encoded)
    encode_s = sum(t["encode_s"] for t in encoded)
    return {
        "tapes": MetadataValue.json(tapes),
        "video_seconds": round(video_s, 2),
        "encode_seconds": round(encode_s, 2),
        "realtime_factor": round(video_s / encode_s, 2) if encode_s else 0.0,
    }


CHECK = AssetCheckSpec(
    "pds_holds_desired_records",
    asset="atproto_records",
    description="The account's collection holds exactly one record per synced item, with its desired "
    "value, as the PDS holds it after the sync: read again, or (after the sync's writes) the plan's read "
    "with the commits the PDS applied onto it and the record CIDs it answered. For a partition proven "
    "converged: as its last clean sync left it, with nothing changed since.",
)


@asset(
    partitions_def=sync_partitions,
    group_name=GROUP,
    backfill_policy=BACKFILL,
    pool=POOL,
    check_specs=[CHECK],
    output_required=False,
    description="The items as records of the owner's ATProto repository, converged from a fresh listing: "
    "creates, updates, deletes in applyWrites batches; links written back to MongoDB.",
)
def atproto_records(
    context: AssetExecutionContext,
    config: SyncConfig,
    source_items: dict[str, PartitionSource],
    media_blobs: dict[str, dict[str, Derived]],
    mongo: MongoResource,
    pds: PdsResource,
) -> Iterator[DagsterEvent | AssetCheckEvaluation | Output[None]]:
    client = pds.client()
    db = mongo.db()
    state = ConvergedState(acpipeline_home())
    # The partitions' MongoDB links are gathered and written a few thousand at a time (see sync/links.py);
    # a partition's events and convergence mark wait until its links are written. MongoDB is written from
    # this thread only (the embedded store's connections belong to their thread).
    links = LinkWriter(db, lock_dir=acpipeline_home() / "locks" if mongo.is_embedded else None)
    stores = _ThreadStores(client)
    waiting: list[Synced] = []
    failed: dict[str, str] = {}
    deferred: dict[str, float] = {}  # partition -> until (epoch seconds)
    by_account: dict[str, list[PartitionSource]] = {}
    syncing = ThreadPoolExecutor(ACCOUNTS_AT_ONCE, thread_name_prefix="account-sync")
    try:
        for key, source in source_items.items():
            if source.account is None:
                failed[key] = f"no user in MongoDB has the ATProto handle {source.handle} any more"
            elif source.proof is not None:
                waiting.append(_proven(context, source, config.dry_run))
            else:
                by_account.setdefault(source.account.did, []).append(source)
        yield from _settle(context, links, state, waiting)

        def sync_account(sources: list[PartitionSource]) -> list[tuple[str, Synced | str]]:
            """An account's partitions one after the other (its commits are a chain): each one's result, or
            why it failed; the others go on."""
            account_state, reads = stores.here()
            out: list[tuple[str, Synced | str]] = []
            for source in sources:
                try:
                    derived = media_blobs[source.key]
                    synced = _sync_partition(context, config, reads, account_state, source, derived, links)
                except OperatorError:
                    raise
                except Exception as exc:  # this partition fails; the others of the run go on
                    out.append((source.key, f"{type(exc).__name__}: {exc}".splitlines()[0][:500]))
                else:
                    out.append((source.key, synced))
            return out

        # Accounts several at a time: a partition's few round trips to the PDS (its commits, any read it
        # needs) wait on the network, not on this process.
        for done in as_completed([syncing.submit(sync_account, sources) for sources in by_account.values()]):
            for key, result in done.result():
                if isinstance(result, str):
                    failed[key] = result
                    context.log.error(f"{key} failed: {result}")
                    continue
                for level, message in result.notes:
                    context.log.log(level, message)
                waiting.append(result)
                if result.deferred_until is not None:
                    deferred[key] = result.deferred_until
                if config.strict and result.items_failed:
                    failed[key] = f"{result.items_failed} items failed (strict mode)"
            if links.pending >= links.flush_at or len(waiting) >= PARTITIONS_PER_RUN:
                yield from _settle(context, links, state, waiting)
        yield from _settle(context, links, state, waiting)
    except BaseException:
        # The run fails (or is stopped): the partitions under way end, and what the PDS already holds still
        # gets linked, if MongoDB lets it; the original error is the one reported.
        syncing.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            links.flush()
        raise
    finally:
        syncing.shutdown(cancel_futures=True)
        state.close()
        stores.close()
        if deferred:
            record_deferred(context.instance, context.run.run_id, deferred)
    for key, reason in failed.items():
        # Failed, visibly: the PDS is not known to hold the partition's records.
        yield AssetCheckEvaluation(
            asset_key=context.asset_key,
            check_name=CHECK.name,
            passed=False,
            partition=key,
            severity=AssetCheckSeverity.ERROR,
            metadata={"sync_failed": reason},
        )
    if not failed:
        # The per-partition check evaluations above stand for the check's output (as an AssetCheckResult's
        # output does): without it Dagster fails the step for a missing output.
        output = context.assets_def.get_output_name_for_asset_check_key(CHECK.key)
        if output in context.op_execution_context.selected_output_names:
            yield Output(None, output_name=output)
        return
    raise Failure(
        description=f"{len(failed)} of {len(source_items)} partitions failed: "
        + "; ".join(f"{key}: {reason}" for key, reason in list(failed.items())[:20]),
        metadata={"failed_partitions": MetadataValue.json(failed)},
    )


def _proven(context: AssetExecutionContext, source: PartitionSource, dry_run: bool) -> "Synced":
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
    synced = Synced([materialization, check], 0)
    if proof.empty and not dry_run:
        synced.mark = (source.account.did, proof.rev, source.media, Mark(proof.fingerprint, 0))
    return synced


@dataclass
class Synced:
    """A synced partition waiting for its links to be written: its events, and the mark it earned."""

    events: list[AssetMaterialization | AssetObservation | AssetCheckEvaluation]
    items_failed: int
    mark: tuple[str, str, str, Mark] | None = None  # (did, rev, media, mark)
    deferred_until: float | None = None  # the PDS's rate limit stopped it until then (epoch seconds)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (level, message) for the run's log


class _ThreadStores:
    """A ConvergedState and RepoReads for each thread that syncs accounts: their SQLite connections serve
    one thread at a time (and the applyWrites thread of that thread's partition)."""

    def __init__(self, client: PdsClient) -> None:
        self._client = client
        self._here = threading.local()
        self._made: list[tuple[ConvergedState, RepoReads]] = []
        self._lock = threading.Lock()

    def here(self) -> tuple[ConvergedState, RepoReads]:
        made: tuple[ConvergedState, RepoReads] | None = getattr(self._here, "stores", None)
        if made is None:
            made = self._here.stores = (
                ConvergedState(acpipeline_home()),
                RepoReads(self._client, acpipeline_home()),
            )
            with self._lock:
                self._made.append(made)
        return made

    def close(self) -> None:
        with self._lock:
            for state, reads in self._made:
                state.close()
                reads.close()
            self._made.clear()


def _settle(
    context: AssetExecutionContext, links: LinkWriter, state: ConvergedState, waiting: list[Synced]
) -> Iterator[DagsterEvent]:
    """Write the gathered links, then log the waiting partitions' events (one batch for the event log) and
    write their marks."""
    links.flush()
    if waiting:
        yield from log_as_batch(context, [event for synced in waiting for event in synced.events])
    for synced in waiting:
        if synced.mark:
            state.mark(*synced.mark)
    waiting.clear()


def _sync_partition(
    context: AssetExecutionContext,
    config: SyncConfig,
    reads: RepoReads,
    state: ConvergedState,
    source: PartitionSource,
    derived: dict[str, Derived],
    links: LinkWriter,
) -> Synced:
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
        turns=lambda: state.turn(account.did),
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
        return Synced([observation, check], len(report.failed), notes=[note])
    event = AssetMaterialization(asset_key=context.asset_key, partition=source.key, metadata=metadata)
    synced = Synced([event, check], len(report.failed))
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
) -> Synced:
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
    return Synced([event, check], len(report.failed), deferred_until=until_s, notes=[(logging.WARNING, note)])


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
