"""The three stages of a partition as assets: source items -> media blobs -> ATProto records."""

import time
import warnings

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetObservation,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from acpipeline.core.items import Derived, Item
from acpipeline.core.media import MEDIA, record_ref
from acpipeline.resources.mongo import MongoResource
from acpipeline.resources.pds import PdsResource
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import acpipeline_home
from acpipeline.sync.blobs import LEXICON_VIDEO_MAX, derive_blobs
from acpipeline.sync.cache import DerivedCache
from acpipeline.sync.converged import source_fingerprint
from acpipeline.sync.extract import Account, extract_items, find_account
from acpipeline.sync.partitions import sync_partitions
from acpipeline.sync.records import RecordSync, SyncReport, list_existing

# BackfillPolicy is beta in Dagster 1.13; it is what keeps one partition per run.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")

GROUP = "sync"
POOL = "pds_writes"
# One partition per run: runs queue, and the pool caps how many write to the PDS at once.
BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=1)


def _partition(context: AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["handle"], keys["media"]


def _account(mongo: MongoResource, handle: str) -> Account:
    account = find_account(mongo.db(), handle)
    if account is None:
        raise Failure(f"no user in MongoDB has the ATProto handle {handle} (or its did/password is missing)")
    return account


class SyncConfig(Config):
    dry_run: bool = False
    """Compute and report the plan (each write with its reason); write nothing to the PDS or MongoDB."""
    strict: bool = False
    """Fail the run when any item failed (by default failed items are reported and the rest syncs)."""


@asset(
    partitions_def=sync_partitions,
    group_name=GROUP,
    backfill_policy=BACKFILL,
    description="The owner's MongoDB documents of one media type, normalised into items (removed ones "
    "kept and marked: they drive deletes).",
)
def source_items(context: AssetExecutionContext, mongo: MongoResource) -> Output[list[Item]]:
    handle, media = _partition(context)
    account = _account(mongo, handle)
    items = extract_items(mongo.db(), MEDIA[media], account.owner)
    removed = sum(1 for i in items if not i.wanted)
    broken = [i for i in items if i.problem and i.wanted]
    return Output(
        items,
        metadata={
            "items": len(items),
            "live": len(items) - removed,
            "removed": removed,
            "bad_documents": len(broken),
            "owner": account.owner or "anonymous",
        },
    )


@asset(
    partitions_def=sync_partitions,
    group_name=GROUP,
    backfill_policy=BACKFILL,
    description="Blobs derived from the items: 512x512 painting thumbnails (with recording detection) and "
    "tape MP4s with their poster frame; cached by content under ACPIPELINE_HOME.",
)
def media_blobs(
    context: AssetExecutionContext, source_items: list[Item], storage: StorageResource, pds: PdsResource
) -> Output[dict[str, Derived]]:
    _, media = _partition(context)
    max_video = LEXICON_VIDEO_MAX
    if media == "tape":
        limit = pds.client().describe_server().get("blobUploadLimit")
        max_video = min(LEXICON_VIDEO_MAX, int(limit)) if limit else LEXICON_VIDEO_MAX
    started = time.monotonic()
    derived, stats = derive_blobs(source_items, media, storage, DerivedCache(acpipeline_home()), max_video)
    metadata = {
        "derived": stats.derived,
        "from_cache": stats.cached,
        "failed": stats.failed,
        "blob_bytes": stats.bytes,
        "seconds": round(time.monotonic() - started, 2),
    }
    if stats.tapes:
        video_s = sum(t["duration_s"] for t in stats.tapes)
        encode_s = sum(t["encode_s"] for t in stats.tapes)
        metadata["tapes"] = MetadataValue.json(stats.tapes)
        metadata["video_seconds"] = round(video_s, 2)
        metadata["encode_seconds"] = round(encode_s, 2)
        metadata["realtime_factor"] = round(video_s / encode_s, 2) if encode_s else 0.0
    return Output(derived, metadata=metadata)


CHECK = AssetCheckSpec(
    "pds_holds_desired_records",
    asset="atproto_records",
    description="A fresh listing of the account's collection holds exactly one record per synced item.",
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
    source_items: list[Item],
    media_blobs: dict[str, Derived],
    mongo: MongoResource,
    pds: PdsResource,
):
    handle, media = _partition(context)
    account = _account(mongo, handle)
    client = pds.client()
    started = time.monotonic()
    sync = RecordSync(client, mongo.db(), MEDIA[media], account, source_items, media_blobs)
    report = sync.run(dry_run=config.dry_run)
    metadata = report_metadata(report, pds.url or "", time.monotonic() - started)
    # What the quick path marks converged: the source this run synced (see acpipeline.sync.converged).
    metadata["source_fingerprint"] = source_fingerprint(source_items)
    if config.dry_run:
        # An observation, not a materialization: a dry run must not make the partition look synced.
        context.log.info(f"dry run of {handle} {media}: {len(report.planned)} writes planned")
        yield AssetObservation(
            asset_key=context.asset_key, partition=context.partition_key, metadata=metadata
        )
        # The check still evaluates the PDS as it is: it fails while the plan has writes to make.
        yield holds_desired(client, sync)
        return
    yield MaterializeResult(metadata=metadata, check_results=[holds_desired(client, sync)])
    if config.strict and report.failed:
        raise Failure(f"{len(report.failed)} items failed in {handle} {media} (strict mode)")


def holds_desired(client, sync: RecordSync) -> AssetCheckResult:
    """Exactly one record per synced item, with the desired value."""
    listed = list_existing(client, sync.account.did, sync.rules.nsid)
    by_ref: dict[str | None, list] = {}
    for record in listed:
        by_ref.setdefault(record_ref(record.value), []).append(record)
    missing = [d.item.ref for d in sync.desired if d.item.ref not in by_ref]
    duplicated = [ref for ref, records in by_ref.items() if len(records) > 1]
    differing = [
        d.item.ref for d in sync.desired if d.item.ref in by_ref and by_ref[d.item.ref][0].value != d.value
    ]
    expected = {d.item.ref for d in sync.desired} | {ref for ref, _ in sync.report.failed}
    extra = [ref for ref in by_ref if ref not in expected]
    passed = not (missing or duplicated or differing or extra)
    return AssetCheckResult(
        check_name=CHECK.name,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "on_pds": len(listed),
            "desired": len(sync.desired),
            "missing": len(missing),
            "duplicated": len(duplicated),
            "differing": len(differing),
            "unexpected": len(extra),
            "examples": MetadataValue.json((missing + duplicated + differing + extra)[:10]),
        },
    )


def report_metadata(report: SyncReport, pds_url: str, duration_s: float) -> dict:
    records_url = (
        f"{pds_url.rstrip('/')}/xrpc/com.atproto.repo.listRecords?repo={report.did}"
        f"&collection={MEDIA[report.media].nsid}"
    )
    failed_table = MetadataValue.table(
        records=[TableRecord({"ref": ref, "reason": reason[:500]}) for ref, reason in report.failed[:500]],
        schema=TableSchema(columns=[TableColumn("ref", "string"), TableColumn("reason", "string")]),
    )
    return {
        "desired": report.desired,
        "created": report.created,
        "updated": report.updated,
        "deleted": report.deleted,
        "unchanged": report.unchanged,
        "failed": len(report.failed),
        "blobs_uploaded": report.blobs_uploaded,
        "blob_bytes_uploaded": report.blob_bytes_uploaded,
        "commits": report.commits,
        "mongo_updates": report.mongo_updates,
        "replans": report.replans,
        "duration_s": round(duration_s, 2),
        "did": report.did,
        "records": MetadataValue.url(records_url),
        "failed_items": failed_table,
        "plan": MetadataValue.json(report.planned[:500]),
    }
