"""The three stages as assets: source items -> media blobs -> ATProto records.

A run covers one partition or a range of them (a backfill's `BackfillPolicy.multi_run`, or the schedule's
and the sensor's range requests): each stage works over `context.partition_keys`, and every partition gets
its own materialization, metadata and check result. A partition that fails fails alone: the others of the
run are recorded as materialized, then the record stage raises naming the failed ones, which Dagster and
its backfills then show as failed."""

import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    BackfillPolicy,
    BetaWarning,
    DagsterEvent,
    MetadataValue,
    Output,
    asset,
)

from acpipeline.core.items import Derived
from acpipeline.core.media import MEDIA
from acpipeline.resources.mongo import MongoResource
from acpipeline.resources.pds import PdsResource
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import acpipeline_home
from acpipeline.sync.blobs import LEXICON_VIDEO_MAX, derive_blobs
from acpipeline.sync.cache import DerivedCache
from acpipeline.sync.converged import latest_revs, prove, source_fingerprint
from acpipeline.sync.extract import extract_owners, find_accounts
from acpipeline.sync.marks import ConvergedState
from acpipeline.sync.partition_sync import CHECK, PartitionSource, SyncConfig
from acpipeline.sync.partitions import FULL_TAG, PARTITIONS_PER_RUN, keys_of_run, sync_partitions
from acpipeline.sync.pre_upload import PreUploader, PreUploadStats, never_linked, not_wanted_in
from acpipeline.sync.record_stage import conclude, converge
from acpipeline.sync.repo_reads import RepoReads

# BackfillPolicy is beta in Dagster 1.13.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")

GROUP = "sync"
POOL = "pds_writes"
# A backfill puts up to this many partitions (of one media type) in one run: a process start-up and a run's
# bookkeeping per hundred partitions instead of per partition; the pool still caps concurrent PDS writers.
BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)


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
    """Per partition key of the run: its items, fingerprint, rev and proof (none under `acpipeline/full`); one
    MongoDB read per media type."""
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
    """Per partition key: each item's derived blobs by ref (none for proven or account-less partitions); new
    items' blobs are pre-uploaded when the run writes."""
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
    """Yields each partition's events and check; a partition that fails does not stop the others, and the step
    then fails naming it."""
    failed: dict[str, str] = {}  # partition -> why
    yield from converge(
        context, config, source_items, media_blobs, pds.client(), mongo.db(), mongo.is_embedded, failed
    )
    yield from conclude(context, failed, len(source_items))
