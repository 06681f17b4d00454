"""What became of the runs the new-content sensor requested, and which partitions already have a run waiting
to start: answered from Dagster's run storage in a query or two per tick, whatever the number of partitions.

A requested partition stays pending until a run covering it has succeeded: each run request carries a
`REQUEST_TAG` of its own. A run that failed or was canceled, or that Dagster never created
(`MISSING_RUN_GRACE_S`), has its partitions requested again, up to `MAX_FAILED_RUNS` runs in a row."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from acpipeline.sync.assets import atproto_records
from acpipeline.sync.partitions import (
    HANDLE_PARTITIONS,
    RANGE_END_TAG,
    RANGE_START_TAG,
    partition_key,
    range_members,
)

PARTITION_TAG = "dagster/partition"
REQUEST_TAG = "acpipeline/sensor_request"  # names one run request of one tick: "<tick batch>.<n>"
REQUESTED, WAITING = "t:", "r:"  # a pending partition's run: by its REQUEST_TAG, or a waiting run by its id
MISSING_RUN_GRACE_S = 600  # a request Dagster has made no run for by then is taken as lost
MAX_FAILED_RUNS = 3  # after this many runs in a row without success, a partition is the nightly reconcile's
STATUS_QUERY_CHUNK = 500  # run tags or ids per run storage query


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
