"""The new-content sensor: every ~15 s, sync exactly the partitions whose source changed.

A tick registers the handles of users who gained an ATProto account, digests every partition of every
account from one projected `find` per collection (`source_scan.py`), and requests the partitions whose digest
differs from the state's as runs over ranges per media type (`run_requests`): new, edited, nuked/deleted or
removed documents, new accounts, tape ZIPs that appeared (`tape_zips.py`), runs that did not succeed
(`requested_runs.py`) and partitions a run deferred for the PDS's rate limit, once their time has come
(`sync/deferral.py`). A change whose partition already has a run waiting to start is pending on that run.

The first tick (no cursor) takes the current digests as its baseline and requests only the non-empty
partitions this instance never materialized: pointing a fresh Dagster at an existing deployment starts its
initial sync, and pointing it at a synced one starts nothing. The state between ticks: `sensor_state.py`.
"""

import time
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from acpipeline.core.fingerprint import EMPTY
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.operations.automation import default_sensor_status
from acpipeline.operations.jobs import sync_job
from acpipeline.operations.requested_runs import (
    MAX_FAILED_RUNS,
    REQUEST_TAG,
    REQUESTED,
    WAITING,
    queued_partitions,
    settle_pending,
)
from acpipeline.operations.sensor_state import SensorState, load_state, save_state
from acpipeline.operations.source_scan import scan_sources
from acpipeline.operations.tape_zips import check_tape_zips
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.assets import atproto_records
from acpipeline.sync.deferral import DEFERRED_TAG, deferred_of_runs
from acpipeline.sync.extract import find_accounts
from acpipeline.sync.partitions import (
    HANDLE_PARTITIONS,
    few_ranges,
    keys_of_run,
    partition_key,
    range_members,
    register_handles,
)

DEFERRED_LOOKBACK_S = 86_400  # a first tick looks for deferring runs this far back
DEFERRED_OVERLAP_S = 60  # ... and later ticks since the previous one, with this margin


@dataclass
class Tick:
    """One sensor tick's decisions: the partitions to sync and why, the state for the next tick, and the
    figures of its log line."""

    requests: dict[str, str]  # partition key -> why
    state: SensorState
    registered: list[str]
    already_queued: list[str]
    documents: int
    zip_checks: int
    seconds: float
    run_requests: list[RunRequest] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)  # left to the nightly reconcile after MAX_FAILED_RUNS

    def summary(self) -> str:
        retried = sum(1 for why in self.requests.values() if why == "retry")
        return (
            f"{len(self.requests)} partitions to sync ({retried} again after a run that did not succeed), "
            f"{len(self.registered)} new handles, {len(self.already_queued)} changes already queued, "
            f"{len(self.state.pending)} partitions pending a run, {len(self.given_up)} given up; "
            f"{self.documents} documents digested, {self.zip_checks} tape ZIPs checked "
            f"in {self.seconds:.1f} s"
        )


def deferred_partitions(
    instance: DagsterInstance, previous: SensorState | None, accounts: Container[str], now: float
) -> dict[str, float]:
    """The partitions runs left for after a rate-limit reset, each with its time: those the previous tick
    knew, and those of the runs tagged since (any run: the sensor's, the schedule's, a backfill, the CLI),
    found by one query on the tag. Partitions of handles without an account are dropped."""
    known = dict(previous.deferred) if previous else {}
    since = previous.deferred_checked if previous and previous.deferred_checked else 0.0
    since = since or now - DEFERRED_LOOKBACK_S
    runs = instance.get_runs(
        filters=RunsFilter(
            tags={DEFERRED_TAG: "true"},
            updated_after=datetime.fromtimestamp(since - DEFERRED_OVERLAP_S, UTC),
        )
    )
    if runs:
        for key, until in deferred_of_runs(instance, [run.run_id for run in runs]).items():
            known[key] = max(known.get(key, 0.0), until)
    return {key: until for key, until in known.items() if key.rpartition("|")[0] in accounts}


def run_requests(
    instance: DagsterInstance, requests: dict[str, str], batch: str
) -> list[tuple[RunRequest, list[str]]]:
    """The partitions to sync as runs over ranges, per media type, at most `PARTITIONS_PER_RUN` each
    (`few_ranges`), each with the requested partitions it covers. Each run carries `REQUEST_TAG`:
    `<batch>.<n>`."""
    order = instance.get_dynamic_partitions(HANDLE_PARTITIONS)
    wanted = dict(zip(keys_of_run(requests), requests.values(), strict=True))
    out = []
    for n, partition_range in enumerate(few_ranges(order, list(wanted))):
        members = [m for m in range_members(order, partition_range.start, partition_range.end) if m in wanted]
        reasons = sorted({wanted[m] for m in members})
        request = RunRequest(
            tags={
                "acpipeline/trigger": "sensor",
                "acpipeline/reason": ",".join(reasons),
                REQUEST_TAG: f"{batch}.{n}",
                **partition_range.tags(),
            }
        )
        out.append((request, [partition_key(h, m) for h, m in members]))
    return out


def evaluate(
    db: MongoDatabase,
    instance: DagsterInstance,
    storage: StorageResource,
    previous: SensorState | None,
    now: float | None = None,
) -> Tick:
    """One tick's decisions, without Dagster's sensor machinery (tests and the scale probe call it)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    registered = register_handles(instance, db)
    accounts = find_accounts(db).by_handle
    scan = scan_sources(db, accounts.values())
    pending, retry, given_up = settle_pending(instance, previous.pending if previous else {}, accounts, now)
    requests: dict[str, str] = {}
    if previous is None:
        synced = instance.get_materialized_partitions(atproto_records.key)
        for handle, slots in scan.digests.items():
            for media, digest in zip(MEDIA_NAMES, slots, strict=True):
                key = partition_key(handle, media)
                if digest != EMPTY and key not in synced:
                    requests[key] = "never-synced"
    else:
        for handle in accounts:
            for media in MEDIA_NAMES:
                if scan.digest(handle, media) != previous.digest(handle, media):
                    why = "new-account" if handle in registered else "source-changed"
                    requests[partition_key(handle, media)] = why
    for key in retry:
        requests.setdefault(key, "retry")
    deferred = deferred_partitions(instance, previous, accounts, now)
    for key in [key for key, until in deferred.items() if until <= now]:
        requests.setdefault(key, "rate-limit-reset")
        del deferred[key]
    zips = check_tape_zips(scan.unlinked_tapes, previous.zips if previous else {}, storage, now)
    for handle in sorted(zips.appeared):
        requests.setdefault(partition_key(handle, "tape"), "tape-zip-appeared")
    # a retry counts the runs in a row that failed the partition; a request for a new change starts afresh
    failed = {key: retry[key] for key, why in requests.items() if why == "retry"}
    queued = queued_partitions(instance, sorted(requests)) if requests else {}
    for key, run_id in queued.items():
        pending[key] = [WAITING + run_id, int(now), failed.get(key, 0)]
    requests = {key: why for key, why in requests.items() if key not in queued}
    runs = run_requests(instance, requests, uuid.uuid4().hex[:12]) if requests else []
    for request, keys in runs:
        for key in keys:
            pending[key] = [REQUESTED + request.tags[REQUEST_TAG], int(now), failed.get(key, 0)]
    return Tick(
        requests=requests,
        state=SensorState(
            digests=scan.digests, zips=zips.states, pending=pending, deferred=deferred, deferred_checked=now
        ),
        registered=registered,
        already_queued=sorted(queued),
        documents=scan.documents,
        zip_checks=zips.checked,
        seconds=time.monotonic() - started,
        run_requests=[request for request, _ in runs],
        given_up=given_up,
    )


@sensor(
    name="new_content_sensor",
    job=sync_job,
    minimum_interval_seconds=15,
    default_status=default_sensor_status(),
    description="Every ~15 s: register new ATProto accounts as handle partitions and sync exactly the "
    "partitions whose MongoDB source changed (new, edited, nuked or deleted items; new accounts; tape ZIPs "
    "that appeared).",
)
def new_content_sensor(
    context: SensorEvaluationContext, mongo: MongoResource, storage: StorageResource
) -> SensorResult:
    """The sensor around `evaluate`: the state the cursor names in, the next state saved and named by the new
    cursor."""
    previous = load_state(context.instance, context.cursor)
    tick = evaluate(mongo.db(), context.instance, storage, previous)
    context.log.info(tick.summary())
    if tick.given_up:
        context.log.warning(
            f"runs of {len(tick.given_up)} partitions failed {MAX_FAILED_RUNS} times in a row; left to the "
            f"nightly reconcile until their source changes: {', '.join(tick.given_up[:20])}"
        )
    cursor = save_state(context.instance, tick.state, context.cursor if previous else None)
    if not tick.run_requests:
        return SensorResult(skip_reason=SkipReason(tick.summary()), cursor=cursor)
    return SensorResult(run_requests=tick.run_requests, cursor=cursor)
