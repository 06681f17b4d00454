"""One pass of the platform bench: a backfill launched through the servers as the UI does it, timed.

A pass is GraphQL `launchPartitionBackfill` with the three sync assets and every partition key
`handle|media` of every registered handle. It is timed by wall clock from the launch to the backfill's
COMPLETED status (polled every `POLL_INTERVAL_S`: the figure is good to about that; the backfill daemon
itself wakes every 30 s). The full pass starts from an empty PDS; the no-op pass is the same backfill
again with nothing changed. Runs are counted from the instance (`dagster_runs`). With the PDS's limits on,
a run may defer partitions that hit an account's write points (runs tagged `acpipeline/deferred`), and a
run may fail on a limit: the pass is reported, not raised, as long as the backfill ends; it reports the
deferred partitions (`acpipeline.sync.deferral.deferred_of_runs`)."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from acpipeline.bench.dagster_runs import _pass_runs, _planned_events, _run_failures
from acpipeline.bench.platform_requests import GLOBAL_LIMIT_PER_S, TallyingProxy, pass_requests
from acpipeline.bench.processes import _tail
from acpipeline.bench.servers import BenchError, Servers, _graphql

if TYPE_CHECKING:
    from dagster import DagsterInstance

SYNC_ASSETS = ("source_items", "media_blobs", "atproto_records")
POLL_INTERVAL_S = 1.0
PROGRESS_EVERY_S = 30.0
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
}"""
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
DONE = SUCCEEDED | {"COMPLETED_FAILED", "FAILED", "CANCELED", "CANCELING", "FAILING"}


@dataclass(frozen=True)
class PassClock:
    """When a backfill was launched and how long it took, with the machine's load around it."""

    wall_started: float  # time.time() at the launch
    launch_s: float  # the launch's GraphQL call
    elapsed: float  # from the launch to the backfill's end
    load_before: list[float]  # 1, 5, 15 min: others' work shows here
    load_after: list[float]


def run_pass(
    servers: Servers,
    label: str,
    keys: list[str],
    order: list[str],
    proxies: tuple[TallyingProxy, TallyingProxy],
    timeout_s: float,
    strict: bool = True,
) -> dict[str, Any]:
    """One backfill of `keys` through GraphQL, timed from the launch to its COMPLETED status, with the
    requests both proxies (PDS, storage) forwarded meanwhile. `strict` False (the PDS's limits on): a
    backfill that ends with failed runs is reported instead of raised."""
    pds_proxy, storage_proxy = proxies
    before = pds_proxy.write_counts()
    outside = sum(row["n"] for p in proxies for row in p.take_tally().values())
    backfill_id, status, clock = _timed_backfill(servers, label, keys, order, timeout_s)
    requests = pass_requests(pds_proxy.take_tally(), storage_proxy.take_tally())
    ended = status in SUCCEEDED or (not strict and status == "COMPLETED_FAILED")
    if not ended:
        raise BenchError(_failure(servers, label, backfill_id, status, order))
    runs = _pass_runs(servers.instance, backfill_id, order)
    if runs["failed_run_ids"] and strict:
        raise BenchError(_failure(servers, label, backfill_id, f"{status} with failed runs", order))
    writes = {k: v for k, v in (Counter(pds_proxy.write_counts()) - Counter(before)).items() if v}
    details = _details(servers.instance, backfill_id, status, clock, runs, writes, requests, outside)
    planned = details["planned_events_per_run"]
    servers.log(
        f"{label} pass: {status} in {clock.elapsed:.1f} s, {runs['runs']} runs "
        f"(median {runs['run_s_median']} s, longest {runs['run_s_max']} s), "
        f"writes at the PDS: {sum(writes.values())} {writes or ''}; requests: PDS "
        f"{requests['pds_total']}, storage {requests['storage_total']}; planned events per run "
        f"{planned['min']}-{planned['max']}"
        + (
            f"; {details['deferred_partitions']} partitions deferred"
            if details["deferred_partitions"]
            else ""
        )
    )
    return details


def _timed_backfill(
    servers: Servers, label: str, keys: list[str], order: list[str], timeout_s: float
) -> tuple[str, str, PassClock]:
    """Launch the backfill and wait for its end: its id, its last status and its clock."""
    params = {
        "assetSelection": [{"path": [name]} for name in SYNC_ASSETS],
        "partitionNames": keys,
        "title": f"platform bench: {label} pass",
    }
    servers.log(f"{label} pass: launching a backfill of {len(keys)} partitions ...")
    load_before = [round(x, 2) for x in os.getloadavg()]
    started, wall_started = time.perf_counter(), time.time()
    launched = _graphql(servers.http, servers.url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise BenchError(f"{label} pass: launchPartitionBackfill answered {launched}")
    backfill_id: str = launched["backfillId"]
    launch_s = time.perf_counter() - started
    status = _wait_for_backfill(servers, label, backfill_id, order, started, timeout_s)
    elapsed = time.perf_counter() - started
    load_after = [round(x, 2) for x in os.getloadavg()]
    return backfill_id, status, PassClock(wall_started, launch_s, elapsed, load_before, load_after)


def _wait_for_backfill(
    servers: Servers, label: str, backfill_id: str, order: list[str], started: float, timeout_s: float
) -> str:
    """The backfill's status once it is done, polled every POLL_INTERVAL_S, with progress every
    PROGRESS_EVERY_S; raises BenchError past `timeout_s` from `started`."""
    next_report = started + PROGRESS_EVERY_S
    while True:
        status = _graphql(servers.http, servers.url, BACKFILL_STATUS, {"id": backfill_id})[
            "partitionBackfillOrError"
        ].get("status")
        now = time.perf_counter()
        if status in DONE:
            return str(status)
        if now - started > timeout_s:
            raise BenchError(
                _failure(servers, label, backfill_id, f"still {status} after {timeout_s:.0f} s", order)
            )
        if now >= next_report:
            servers.log(f"{label} pass: {now - started:.0f} s, {_progress(servers.instance, backfill_id)}")
            next_report += PROGRESS_EVERY_S
        time.sleep(POLL_INTERVAL_S)


def _details(
    instance: DagsterInstance,
    backfill_id: str,
    status: str,
    clock: PassClock,
    runs: dict[str, Any],
    writes: dict[str, int],
    requests: dict[str, Any],
    outside: int,
) -> dict[str, Any]:
    """The pass's figures: its timing, writes, requests, planned events, deferrals and runs."""
    from acpipeline.sync.deferral import deferred_of_runs

    run_ids = runs.pop("run_ids")
    backfill = instance.get_backfill(backfill_id)
    end = getattr(backfill, "backfill_end_timestamp", None)
    deferred = deferred_of_runs(instance, run_ids)
    floor_s = requests["pds_globally_limited"] / GLOBAL_LIMIT_PER_S
    elapsed, wall_started = clock.elapsed, clock.wall_started
    details = {
        "backfill_id": backfill_id,
        "status": status,
        "wall_s": round(elapsed, 2),
        "launch_s": round(clock.launch_s, 2),
        "daemon_s": round(end - backfill.backfill_timestamp, 2) if end and backfill else None,
        "launch_to_first_run_s": _since(runs.pop("first_run_created"), wall_started),
        "launch_to_first_start_s": _since(runs.pop("first_run_started"), wall_started),
        "last_run_end_to_done_s": round(wall_started + elapsed - runs["last_run_ended"], 2)
        if runs["last_run_ended"]
        else None,
        "writes": writes,
        "requests": requests,
        "requests_outside_passes": outside,  # between the passes (none expected), not counted above
        "planned_events_per_run": _planned_events(instance, run_ids),
        "deferred_partitions": len(deferred),
        "deferred_until": datetime.fromtimestamp(max(deferred.values()), UTC).isoformat(timespec="seconds")
        if deferred
        else None,
        "floor_s": round(floor_s, 1),
        "time_over_floor": round(elapsed / floor_s, 2) if floor_s else None,
        "failures": _run_failures(instance, runs["failed_run_ids"]),
        "load_before": clock.load_before[0],
        "load_after": clock.load_after[0],
        "loadavg_before": clock.load_before,
        "loadavg_after": clock.load_after,
        **runs,
    }
    details.pop("last_run_ended")
    return details


def _progress(instance: DagsterInstance, backfill_id: str) -> str:
    from dagster import RunsFilter

    runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    statuses = Counter(r.status.value.lower() for r in runs)
    return f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))


def _failure(servers: Servers, label: str, backfill_id: str, what: str, order: list[str]) -> str:
    runs = _pass_runs(servers.instance, backfill_id, order)
    failures = _run_failures(servers.instance, runs["failed_run_ids"])
    name, path = list(servers.logs().items())[-1]  # the daemon's (or dagster dev's)
    return (
        f"{label} pass: backfill {backfill_id} {what}; runs {runs['statuses']}\n"
        + "".join(f"  failed run {line}\n" for line in failures)
        + f"--- {name} log (tail) ---\n{_tail(path)}"
    )


def _since(timestamp: float, origin: float) -> float | None:
    return round(timestamp - origin, 2) if timestamp else None
