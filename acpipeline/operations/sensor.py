"""The new-content sensor: every ~15 s, sync exactly the partitions whose source changed.

A tick registers the handles of users who gained an ATProto account, digests every partition of every
account from one projected `find` per collection (see `fingerprint.py`), and requests the partitions whose
digest differs from the cursor's (new, edited, nuked/deleted or removed documents, and new accounts) as
runs over ranges per media type (`run_requests`). Tapes are the one source that changes outside MongoDB (the
ZIP is uploaded after the document): a live tape without a record whose ZIP was missing is HEADed again
every `ZIP_RECHECK_S`, and its partition is requested when the ZIP appears.

The first tick (no cursor) takes the current digests as its baseline and requests only the non-empty
partitions this instance never materialized, so pointing a fresh Dagster at an existing deployment starts
its initial sync, and pointing it at a synced one starts nothing.

A requested partition stays pending until a run covering it has succeeded: each run request carries a
`REQUEST_TAG` of its own, and a later tick asks Dagster's run storage for the status of every pending run in
a query or two (`run_statuses`), not one a partition. A run that failed or was canceled, or that Dagster
never created (`MISSING_RUN_GRACE_S`), has its partitions requested again on that tick ("retry"), up to
`MAX_FAILED_RUNS` runs in a row; then the partition is left to the nightly reconcile until its source
changes again. A change whose partition already has a run waiting to start is pending on that run instead
(it will read the change).

A partition a run deferred because the PDS's rate limit outlasted the retry budget (any run: the sensor's,
the schedule's, a backfill, the CLI) is found from the runs tagged `acpipeline/deferred` since the previous
tick (one query) and requested again once its time has come ("rate-limit-reset").

The state (an 11-character digest per non-empty partition as of the last tick, the partitions pending and the
tape ZIPs waited for) is kept in Dagster's key-value store and named by the cursor (see `save_state`): Dagster
stores the cursor with every tick, and at 4,201 accounts the state is ~230 KB (~75 KB more while every
partition is pending, as in a first sync).
"""

import base64
import hashlib
import json
import time
import uuid
import zlib
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from acpipeline.core.fingerprint import EMPTY
from acpipeline.core.items import Item, ItemProblem
from acpipeline.core.media import MEDIA_NAMES, TAPE
from acpipeline.dagster_compat import kv_get, kv_set
from acpipeline.operations.automation import default_sensor_status
from acpipeline.operations.fingerprint import scan_sources
from acpipeline.operations.jobs import sync_job
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.assets import DEFERRED_TAG, atproto_records, deferred_of_runs
from acpipeline.sync.extract import find_accounts
from acpipeline.sync.partitions import (
    HANDLE_PARTITIONS,
    RANGE_END_TAG,
    RANGE_START_TAG,
    few_ranges,
    keys_of_run,
    partition_key,
    range_members,
    register_handles,
)

CURSOR_VERSION = "kv1:"
STATE_KEY = "acpipeline/new_content_sensor/state"
STATE_CHUNK = 60_000  # characters per stored value (MySQL TEXT holds 64 KB)
ZIP_RECHECK_S = 300  # a missing tape ZIP is looked for again at most this often
MAX_ZIP_CHECKS = 64  # HEAD requests per tick; the rest wait for the next tick
ZIP_CHECK_TIMEOUT_S = 5.0
ZIP_CHECK_BUDGET_S = 15.0
MISSING, PRESENT = "m", "p"
PARTITION_TAG = "dagster/partition"
REQUEST_TAG = "acpipeline/sensor_request"  # names one run request of one tick: "<tick batch>.<n>"
REQUESTED, WAITING = "t:", "r:"  # a pending partition's run: by its REQUEST_TAG, or a waiting run by its id
MISSING_RUN_GRACE_S = 600  # a request Dagster has made no run for by then is taken as lost
MAX_FAILED_RUNS = 3  # after this many runs in a row without success, a partition is the nightly reconcile's
STATUS_QUERY_CHUNK = 500  # run tags or ids per run storage query
DEFERRED_LOOKBACK_S = 86_400  # a first tick looks for deferring runs this far back
DEFERRED_OVERLAP_S = 60  # ... and later ticks since the previous one, with this margin


@dataclass
class SensorState:
    digests: dict[str, list[str]] = field(default_factory=dict)  # handle -> digest per MEDIA_NAMES slot
    zips: dict[str, list[Any]] = field(default_factory=dict)  # tape ref -> [MISSING|PRESENT, checked_at]
    # partition key -> [its run (REQUESTED + tag value or WAITING + run id), since, runs in a row that failed]
    pending: dict[str, list[Any]] = field(default_factory=dict)
    # partition key -> when the PDS's rate limit lets it run again (a run deferred it); and when the runs
    # that defer were last looked for
    deferred: dict[str, float] = field(default_factory=dict)
    deferred_checked: float = 0.0

    def digest(self, handle: str, media: str) -> str:
        slots = self.digests.get(handle)
        return slots[MEDIA_NAMES.index(media)] if slots else EMPTY


def encode_state(state: SensorState) -> str:
    """The state as compact text: zlib-compressed JSON in base64 (deterministic for the same state)."""
    payload = json.dumps(
        {
            "media": MEDIA_NAMES,
            "digests": state.digests,
            "zips": state.zips,
            "pending": state.pending,
            "deferred": state.deferred,
            "deferred_checked": state.deferred_checked,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    return base64.b64encode(zlib.compress(payload.encode(), 9)).decode()


def decode_state(blob: str) -> SensorState | None:
    """The state, or None for text this version cannot read."""
    try:
        data = json.loads(zlib.decompress(base64.b64decode(blob, validate=True)))
    except (ValueError, zlib.error):
        return None
    if not isinstance(data, dict) or data.get("media") != MEDIA_NAMES:
        return None
    return SensorState(
        digests=data.get("digests", {}),
        zips=data.get("zips", {}),
        pending=data.get("pending", {}),
        deferred=data.get("deferred", {}),
        deferred_checked=data.get("deferred_checked", 0.0),
    )


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor or not cursor.startswith(CURSOR_VERSION):
        return None
    generation, _, checksum = cursor[len(CURSOR_VERSION) :].partition(":")
    return (int(generation), checksum) if generation.isdigit() and checksum else None


def save_state(instance: DagsterInstance, state: SensorState, cursor: str | None) -> str:
    """Store the state beside the cursor and return the new cursor: `kv1:<generation>:<checksum>`.

    The state (up to ~230 KB for 4,201 accounts with content in every media type) lives in Dagster's own
    key-value store, in one of two slots that alternate by generation, so the cursor Dagster writes with every
    tick stays ~20 characters and the previous generation survives a tick that fails after saving. An
    unchanged state writes nothing."""
    blob = encode_state(state)
    checksum = hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()
    previous = _parse_cursor(cursor)
    if cursor and previous and previous[1] == checksum:
        return cursor
    generation = previous[0] + 1 if previous else 1
    slot = f"{STATE_KEY}/{generation % 2}"
    chunks = [blob[i : i + STATE_CHUNK] for i in range(0, len(blob), STATE_CHUNK)]
    pairs = {f"{slot}/{n}": chunk for n, chunk in enumerate(chunks)}
    pairs[slot] = f"{generation}:{len(chunks)}:{checksum}"
    kv_set(instance, pairs)
    return f"{CURSOR_VERSION}{generation}:{checksum}"


def load_state(instance: DagsterInstance, cursor: str | None) -> SensorState | None:
    """The state the cursor names; None (a first tick) for no cursor, or one whose state is not stored
    (an operator reset or edited the cursor, or the instance's storage was replaced)."""
    parsed = _parse_cursor(cursor)
    if parsed is None:
        return None
    generation, checksum = parsed
    slot = f"{STATE_KEY}/{generation % 2}"
    header = kv_get(instance, {slot}).get(slot, "")
    stored_generation, _, rest = header.partition(":")
    count, _, stored_checksum = rest.partition(":")
    if stored_generation != str(generation) or stored_checksum != checksum or not count.isdigit():
        return None
    keys = [f"{slot}/{n}" for n in range(int(count))]
    values = kv_get(instance, set(keys))
    blob = "".join(values.get(key, "") for key in keys)
    if hashlib.blake2b(blob.encode(), digest_size=6).hexdigest() != checksum:
        return None
    return decode_state(blob)


@dataclass
class Tick:
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


def queued_partitions(instance: DagsterInstance, keys: list[str]) -> dict[str, str]:
    """Those of `keys` with a sync run that has not started yet (it will read the source as it is then), each
    with the id of such a run. Runs carry the partition tag (one partition) or the range tags (the sensor's,
    the schedule's and backfills' runs); a range stands for every partition in it."""
    waiting = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]
    wanted = set(keys)
    order: Sequence[str] | None = None
    found: dict[str, str] = {}
    for run in instance.get_runs(filters=RunsFilter(statuses=waiting)):
        if run.asset_selection is not None and atproto_records.key not in run.asset_selection:
            continue
        if PARTITION_TAG in run.tags:
            covered = [run.tags[PARTITION_TAG]]
        elif RANGE_START_TAG in run.tags and RANGE_END_TAG in run.tags:
            order = order if order is not None else instance.get_dynamic_partitions(HANDLE_PARTITIONS)
            members = range_members(order, run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG])
            covered = [partition_key(h, m) for h, m in members]
        else:
            continue
        for key in wanted.intersection(covered):
            found.setdefault(key, run.run_id)
    return found


def run_statuses(instance: DagsterInstance, refs: set[str]) -> dict[str, DagsterRunStatus]:
    """The status of the run each ref names (REQUESTED + its REQUEST_TAG value, or WAITING + its id), for
    those Dagster has a run of: one query of each kind per `STATUS_QUERY_CHUNK` refs, whatever the number of
    partitions. A request with several runs (an operator re-executed one) counts as its best: a success, or
    else a run not finished."""
    tokens = sorted(ref[len(REQUESTED) :] for ref in refs if ref.startswith(REQUESTED))
    run_ids = sorted(ref[len(WAITING) :] for ref in refs if ref.startswith(WAITING))
    n = STATUS_QUERY_CHUNK
    queries = [RunsFilter(tags={REQUEST_TAG: tokens[i : i + n]}) for i in range(0, len(tokens), n)]
    queries += [RunsFilter(run_ids=run_ids[i : i + n]) for i in range(0, len(run_ids), n)]
    rank = {DagsterRunStatus.SUCCESS: 2, DagsterRunStatus.FAILURE: 0, DagsterRunStatus.CANCELED: 0}
    out: dict[str, DagsterRunStatus] = {}
    for filters in queries:
        for run in instance.get_runs(filters=filters):
            ref = REQUESTED + run.tags[REQUEST_TAG] if filters.tags else WAITING + run.run_id
            if ref not in out or rank.get(run.status, 1) > rank.get(out[ref], 1):
                out[ref] = run.status
    return out


def settle_pending(
    instance: DagsterInstance, pending: dict[str, list[Any]], accounts: Container[str], now: float
) -> tuple[dict[str, list[Any]], dict[str, int], list[str]]:
    """What became of the pending partitions' runs: (those still pending, those to request again with the
    runs in a row that failed them, those given up). A success ends the wait; a failure, a cancellation or a
    request Dagster made no run for within `MISSING_RUN_GRACE_S` (or a waiting run since deleted) means
    another request, up to `MAX_FAILED_RUNS` in a row. Partitions of handles without an account are
    dropped."""
    live = {key: entry for key, entry in pending.items() if key.rpartition("|")[0] in accounts}
    statuses = run_statuses(instance, {ref for ref, _, _ in live.values()}) if live else {}
    still: dict[str, list[Any]] = {}
    retry: dict[str, int] = {}
    given_up: list[str] = []
    for key, (ref, since, failed) in sorted(live.items()):
        status = statuses.get(ref)
        if status == DagsterRunStatus.SUCCESS:
            continue
        lost = status is None and (ref.startswith(WAITING) or now - since >= MISSING_RUN_GRACE_S)
        if status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) and not lost:
            still[key] = [ref, since, failed]
        elif failed + 1 < MAX_FAILED_RUNS:
            retry[key] = failed + 1
        else:
            given_up.append(key)
    return still, retry, given_up


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


@dataclass
class ZipCheck:
    states: dict[str, list[Any]]  # tape ref -> [MISSING|PRESENT, checked_at]
    appeared: set[str]  # handles with a tape whose missing ZIP is there now
    checked: int


def check_tape_zips(
    unlinked: dict[str, list[Item]], known: dict[str, list[Any]], storage: StorageResource, now: float
) -> ZipCheck:
    """HEAD the ZIPs of live tapes without a record that are due: never looked at, or missing and last looked
    at `ZIP_RECHECK_S` ago. A ZIP seen present is not looked at again while its tape has no record (a sync
    that fails it anyway is the nightly schedule's to retry)."""
    states: dict[str, list[Any]] = {}
    due: list[tuple[str, Item, bool]] = []  # (handle, tape, known to be missing)
    for handle, items in unlinked.items():
        for item in items:
            entry = known.get(item.ref)
            if entry:
                states[item.ref] = entry
            if not entry or (entry[0] == MISSING and now - entry[1] >= ZIP_RECHECK_S):
                due.append((handle, item, bool(entry)))
    due.sort(key=lambda d: not d[2])  # tapes known to be missing first: they are the ones waited on
    due = due[:MAX_ZIP_CHECKS]
    appeared: set[str] = set()
    if not due:
        return ZipCheck(states, appeared, 0)
    quick = StorageResource(
        image_url=storage.image_url,
        guest_image_url=storage.guest_image_url,
        zip_url=storage.zip_url,
        buckets=list(storage.buckets),
        timeout_s=ZIP_CHECK_TIMEOUT_S,
    )

    def exists(item: Item) -> bool | None:
        try:
            return quick.exists(quick.url_of(TAPE.zip_file(item)))
        except ItemProblem:
            return None  # unreachable, refused or not a storage URL: look again next tick

    pool = ThreadPoolExecutor(max_workers=8)
    futures = {pool.submit(exists, item): (handle, item, missing) for handle, item, missing in due}
    done, pending = wait_futures(futures, timeout=ZIP_CHECK_BUDGET_S)
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        handle, item, was_missing = futures[future]
        found = future.result()
        if found is None:
            continue
        states[item.ref] = [PRESENT if found else MISSING, int(now)]
        if found and was_missing:
            appeared.add(handle)
    if not pending:
        quick.teardown_after_execution(None)
    return ZipCheck(states, appeared, len(done))


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
