"""Materialize sync partitions through Dagster from the command line (recorded in the DAGSTER_HOME
instance, so the UI shows the same history as runs it launched itself)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from typing import Any

import psutil
from dagster import (
    AssetCheckEvaluation,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    JsonMetadataValue,
    RunsFilter,
)
from dagster._core.events import AssetObservationData, StepMaterializationData
from dagster._core.execution.plan.objects import StepFailureData
from dagster_shared.error import SerializableErrorInfo

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.dagster_compat import apply_fixes, free_pool_slots
from acpipeline.errors import OperatorError
from acpipeline.instance import get_instance, open_instance
from acpipeline.resources import resolved
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.pds import PdsClient, PdsResource
from acpipeline.sync.converged import Proof, prove_selection
from acpipeline.sync.extract import Accounts, find_accounts
from acpipeline.sync.outcome import COUNTS, PartitionOutcome
from acpipeline.sync.partitions import (
    FULL_TAG,
    HANDLE_PARTITIONS,
    PartitionRange,
    partition_key,
    partition_ranges,
    range_members,
    register_handles,
)


@dataclass
class PartitionResult:
    """How one partition ended in a command-line sync: its run, its outcome and its check; `row()` is what
    `--json` prints."""

    handle: str
    media: str
    ok: bool
    outcome: PartitionOutcome | None = None  # None when the run recorded nothing for it (it failed first)
    check_passed: bool | None = None
    error: str | None = None
    run_id: str = ""
    skipped: bool = False  # proven converged: no run was needed (see acpipeline.sync.converged)
    dry_run: bool = False

    def row(self) -> dict[str, Any]:
        figures = self.outcome.row(self.dry_run) if self.outcome else _NO_FIGURES
        return {
            "handle": self.handle,
            "media": self.media,
            "ok": self.ok,
            **figures,
            "check_passed": self.check_passed,
            "error": self.error,
            "run_id": self.run_id,
            "skipped": self.skipped,
        }

    @property
    def deferred(self) -> bool:
        """The PDS's rate limit stopped it until `deferred_until`; the rest waits for a later run."""
        return bool(self.outcome and self.outcome.deferred_until)

    @property
    def clean(self) -> bool:
        """Succeeded with nothing failed and the check passed: what makes a partition converged."""
        return self.skipped or (
            self.ok and self.check_passed is True and not (self.outcome and self.outcome.failed)
        )


_NO_FIGURES: dict[str, Any] = {**PartitionOutcome().row(dry_run=False), **dict.fromkeys(COUNTS)}


# Told of each batch of finished partitions and how many were selected (for progress on a terminal).
Progress = Callable[[list[PartitionResult], int], None]


def _no_progress(finished: list[PartitionResult], total: int) -> None:
    pass


def run_partitions(
    defs: Definitions,
    instance: DagsterInstance | None,
    handles: list[str] | None,
    media: list[str] | None,
    dry_run: bool = False,
    strict: bool = False,
    full: bool = False,
    progress: Progress | None = None,
) -> tuple[list[PartitionResult], list[str]]:
    """Run each selected partition; returns the results and the users skipped for having no account.

    Unless `full` (or a dry run), a partition proven converged since the last sync is not run again.
    `instance` None: the DAGSTER_HOME instance, opened only when some partition has to run (opening it
    takes most of a no-op sync's time). `progress` is called with each batch of finished partitions and
    the number selected (the proven ones first, then each run's as it ends)."""
    with resolved(defs, "mongo") as mongo, resolved(defs, "pds") as pds:
        return _run_partitions(
            defs, instance, mongo, pds, handles, media, dry_run, strict, full, progress or _no_progress
        )


def _run_partitions(
    defs: Definitions,
    instance: DagsterInstance | None,
    mongo: MongoResource,
    pds: PdsResource,
    handles: list[str] | None,
    media: list[str] | None,
    dry_run: bool,
    strict: bool,
    full: bool,
    progress: Progress,
) -> tuple[list[PartitionResult], list[str]]:
    db = mongo.db()
    accounts = find_accounts(db)
    selected = handles or sorted(accounts.by_handle)
    unknown = [h for h in selected if h not in accounts.by_handle]
    if unknown:
        raise OperatorError(f"no user with an ATProto account has the handle {', '.join(unknown)}")
    run_config = {
        "ops": {"atproto_records": {"config": {"dry_run": dry_run, "strict": strict}}},
        # The full event log goes to the instance (and the UI); the terminal gets warnings only.
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    tags = {"acpipeline/cli": "dry-run" if dry_run else "sync", HOST_TAG: socket.gethostname()}
    if full:
        tags[FULL_TAG] = "true"
    keys = [(handle, name) for handle in selected for name in media or MEDIA_NAMES]
    # The runs prove convergence themselves; proving it here first means a sync with nothing to do opens
    # no Dagster instance and starts no run at all.
    work, proven = prove_selection(pds.client(), db, accounts, keys, full)
    keys = [key for key in keys if key not in proven]
    skipped = [_proven_result(handle, name, proof) for (handle, name), proof in proven.items()]
    total = len(keys) + len(skipped)
    progress(skipped, total)
    results: list[PartitionResult] = []
    if keys:
        instance = instance or get_instance()
        ranges = _cli_ranges(instance, db, keys, work)
        workers = min(len(ranges), sync_workers())
        logins = log_in_ahead(pds.client(), accounts, ranges[:workers]) if not dry_run else None
        release_dead_runs(instance)
        if logins:
            logins.join()  # before forking: the workers read the sessions it saved
        mongo.close()
        if workers <= 1 or instance.is_ephemeral:
            for partition_range in ranges:
                batch = _execute(defs, instance, partition_range, run_config, tags)
                results += batch
                progress(batch, total)
        else:
            # Ranges are independent runs: several at once in forked workers, each recording into the same
            # instance (Dagster's storage is multi-process safe; the pool still caps PDS writers).
            global _FORKED
            _FORKED = (defs, run_config, tags)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for future in as_completed([pool.submit(_execute_forked, r) for r in ranges]):
                    batch = future.result()
                    results += batch
                    progress(batch, total)
    order = {key: n for n, key in enumerate((h, m) for h in selected for m in media or MEDIA_NAMES)}
    return sorted(results + skipped, key=lambda r: order[(r.handle, r.media)]), accounts.without_account


def _proven_result(handle: str, media: str, proof: Proof) -> PartitionResult:
    outcome = PartitionOutcome.proven(proof.desired, proof.not_in_mongodb)
    return PartitionResult(handle, media, True, outcome, True, skipped=True)


def _cli_ranges(
    instance: DagsterInstance,
    db: MongoDatabase,
    keys: list[tuple[str, str]],
    work: dict[tuple[str, str], float],
) -> list[PartitionRange]:
    """The runs: ranges per media type as a backfill cuts them, the most work first (the short ones fill in
    beside the long ones)."""
    register_handles(instance, db)
    order = instance.get_dynamic_partitions(HANDLE_PARTITIONS)
    ranges = partition_ranges(order, keys)

    def work_of(r: PartitionRange) -> float:
        return sum(work.get(key, 0.0) for key in range_members(order, r.start, r.end))

    return sorted(ranges, key=work_of, reverse=True)


_FORKED: tuple[Definitions, dict[str, Any], dict[str, str]] | None = None


def sync_workers() -> int:
    """Partition runs at once: `ACPIPELINE_SYNC_WORKERS`, default the number of cores (2 to 4)."""
    configured = os.environ.get("ACPIPELINE_SYNC_WORKERS")
    return int(configured) if configured else min(4, max(2, os.cpu_count() or 1))


def _execute_forked(partition_range: PartitionRange) -> list[PartitionResult]:
    """A range's run in a forked worker, with the worker's own instance (opened on its first run)."""
    assert _FORKED is not None
    defs, run_config, tags = _FORKED
    return _execute(defs, _worker_instance(), partition_range, run_config, tags)


@cache
def _worker_instance() -> DagsterInstance:
    """Called only in forked workers (the parent never opens it), so each worker gets its own."""
    return open_instance()


def log_in_ahead(client: PdsClient, accounts: Accounts, ranges: list[PartitionRange]) -> threading.Thread:
    """Sessions for the accounts of the runs that start first, made while the workers start: a login costs
    the PDS about 0.35 s of password hashing, otherwise waited for at the start of the record stage.
    Accounts with a live saved session cost nothing. A failed login is left for the run to report."""
    handles = [k.rpartition("|")[0] for r in ranges for k in (r.start, r.end)]
    known = [accounts.by_handle[h] for h in handles if h in accounts.by_handle]
    wanted = {account.did: account.password for account in known}

    def log_in() -> None:
        for did, password in wanted.items():
            with contextlib.suppress(Exception):  # reported by the run that needs the session
                client.session(did, password)

    thread = threading.Thread(target=log_in, name="log-in-ahead", daemon=True)
    thread.start()
    return thread


def _execute(
    defs: Definitions,
    instance: DagsterInstance,
    partition_range: PartitionRange,
    run_config: dict[str, Any],
    tags: dict[str, str],
) -> list[PartitionResult]:
    apply_fixes()  # `execute_in_process` runs Dagster's own executor, not the code location's `run_executor`
    me = psutil.Process()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
        tags={**tags, **partition_range.tags(), PID_TAG: str(me.pid), STARTED_TAG: str(me.create_time())},
    )
    order = instance.get_dynamic_partitions(HANDLE_PARTITIONS)
    return _outcome(range_members(order, partition_range.start, partition_range.end), result)


HOST_TAG, PID_TAG, STARTED_TAG = "acpipeline/host", "acpipeline/pid", "acpipeline/process-started"


def release_dead_runs(instance: DagsterInstance) -> list[str]:
    """Fail the runs an earlier CLI sync on this host left STARTED when it was killed, and free the
    `pds_writes` pool slots they held: a killed in-process run never releases them, and without a daemon
    nothing else notices, so the next sync would wait for a slot forever."""
    released = []
    runs = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
    )
    for run in runs:
        if run.tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in run.tags:
            continue
        if _alive(int(run.tags[PID_TAG]), float(run.tags.get(STARTED_TAG, 0))):
            continue
        instance.report_run_failed(run, message="the acpipeline process running it is gone (killed)")
        free_pool_slots(instance, run.run_id)
        released.append(run.run_id)
    return released


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        # A killed worker whose parent died too may linger as a zombie nobody reaps: it is gone as well.
        return bool(process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < 1.0)
    except psutil.Error:
        return False


def _outcome(keys: list[tuple[str, str]], result: ExecuteInProcessResult) -> list[PartitionResult]:
    """Each partition's result from the run's events: its own materialization (or dry-run observation)
    of the records, its check, and its reason when the run names it failed."""
    outcomes: dict[str, PartitionOutcome] = {}
    checks: dict[str, bool] = {}
    failed: dict[str, str] = {}
    for event in result.all_events:
        data = event.event_specific_data
        entry = (
            data.materialization
            if isinstance(data, StepMaterializationData)
            else data.asset_observation
            if isinstance(data, AssetObservationData)
            else None
        )
        if entry is not None and entry.asset_key.to_user_string() == "atproto_records":
            outcomes[str(entry.partition)] = PartitionOutcome.from_metadata(entry.metadata)
        elif isinstance(data, AssetCheckEvaluation):
            checks[str(data.partition)] = data.passed
        elif isinstance(data, StepFailureData):
            named = data.user_failure_data and data.user_failure_data.metadata.get("failed_partitions")
            if isinstance(named, JsonMetadataValue) and isinstance(named.value, dict):
                failed.update(named.value)
            else:
                failed.setdefault("*", _root_cause(data.error) if data.error else "run failed")
    dry_run = result.dagster_run.tags.get("acpipeline/cli") == "dry-run"
    out = []
    for handle, media in keys:
        key = partition_key(handle, media)
        # A failure the run does not pin on partitions (a stage that crashed) is every partition's.
        error = failed.get(key) or failed.get("*")
        outcome = outcomes.get(key)
        out.append(
            PartitionResult(
                handle, media, error is None, outcome, checks.get(key), error, result.run_id, dry_run=dry_run
            )
        )
    return out


def _root_cause(info: SerializableErrorInfo) -> str:
    """The message of the exception beneath Dagster's own wrappers (a failed login, a missing account)."""
    while info.cause is not None and (info.cls_name or "").startswith("Dagster"):
        info = info.cause
    message: str = info.message
    return message.strip().splitlines()[0]
