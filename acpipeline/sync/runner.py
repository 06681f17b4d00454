"""Materialize sync partitions through Dagster from the command line (recorded in the DAGSTER_HOME
instance, so the UI shows the same history as runs it launched itself)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psutil
from dagster import DagsterInstance, DagsterRunStatus, Definitions, EnvVar, RunsFilter, TableMetadataValue

from acpipeline.core.media import MEDIA, MEDIA_NAMES
from acpipeline.errors import OperatorError
from acpipeline.instance import get_instance
from acpipeline.settings import acpipeline_home
from acpipeline.sync.converged import ConvergedState, latest_rev, repo_collections, source_fingerprint
from acpipeline.sync.extract import count_items, extract_items, find_accounts
from acpipeline.sync.partitions import partition_key, register_handles


@dataclass
class PartitionResult:
    handle: str
    media: str
    ok: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    check_passed: bool | None = None
    error: str | None = None
    run_id: str = ""
    skipped: bool = False  # proven converged: no run was needed (see acpipeline.sync.converged)

    def row(self) -> dict[str, Any]:
        keys = ("desired", "created", "updated", "deleted", "unchanged", "failed", "duration_s")
        return {
            "handle": self.handle,
            "media": self.media,
            "ok": self.ok,
            **{k: self.metadata.get(k) for k in keys},
            "check_passed": self.check_passed,
            "failed_items": self.metadata.get("failed_items") or [],
            "planned": self.metadata.get("plan", []) if self.metadata.get("dry_run") else [],
            "error": self.error,
            "run_id": self.run_id,
            "skipped": self.skipped,
        }

    @property
    def clean(self) -> bool:
        """Succeeded with nothing failed and the check passed: what makes a partition converged."""
        return self.skipped or (self.ok and self.check_passed is True and not self.metadata.get("failed"))


def _plain(value: Any) -> Any:
    if isinstance(value, TableMetadataValue):
        return [record.data for record in value.records]
    return getattr(value, "value", value)


def run_partitions(
    defs: Definitions,
    instance: DagsterInstance | None,
    handles: list[str] | None,
    media: list[str] | None,
    dry_run: bool = False,
    strict: bool = False,
    full: bool = False,
) -> tuple[list[PartitionResult], list[str]]:
    """Run each selected partition; returns the results and the users skipped for having no account.

    Unless `full` (or a dry run), a partition proven converged since the last sync is not run again.
    `instance` None: the DAGSTER_HOME instance, opened only when some partition has to run (opening it
    takes most of a no-op sync's time)."""
    with resolved(defs, "mongo") as mongo, resolved(defs, "pds") as pds:
        return _run_partitions(defs, instance, mongo, pds, handles, media, dry_run, strict, full)


@contextmanager
def resolved(defs: Definitions, name: str) -> Iterator[Any]:
    """A resource of the definitions with its EnvVars read from the environment, used as a plain object
    (as Dagster allows outside runs): initialising it through Dagster would open an ephemeral instance,
    which takes most of a no-op sync's time."""
    configured = defs.resources[name]
    fields = {key: getattr(configured, key) for key in type(configured).model_fields}
    resource = type(configured)(
        **{key: value.get_value() if isinstance(value, EnvVar) else value for key, value in fields.items()}
    )
    try:
        yield resource
    finally:
        resource.teardown_after_execution(None)  # our resources' teardowns need no context


def _run_partitions(
    defs: Definitions,
    instance: DagsterInstance | None,
    mongo: Any,
    pds: Any,
    handles: list[str] | None,
    media: list[str] | None,
    dry_run: bool,
    strict: bool,
    full: bool,
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
    keys = [(handle, name) for handle in selected for name in media or MEDIA_NAMES]
    quick = QuickPath(pds.client(), db, accounts, keys, full) if not dry_run else None
    skipped = quick.converged() if quick else []
    keys = [key for key in keys if key not in {(r.handle, r.media) for r in skipped}]
    if quick:
        keys.sort(key=quick.work, reverse=True)  # the longest first: the short ones fill in beside them
    workers = min(len(keys), sync_workers())
    if keys:
        logins = log_in_ahead(pds.client(), accounts, keys[:workers]) if not dry_run else None
        instance = instance or get_instance()
        release_dead_runs(instance)
        register_handles(instance, db)
        if logins:
            logins.join()  # before forking: the workers read the sessions it saved
    mongo.close()
    if not keys:
        results = []
    elif workers <= 1 or instance.is_ephemeral:
        results = [_execute(defs, instance, key, run_config, tags) for key in keys]
    else:
        # Partitions are independent runs: run several at once in forked workers, each recording into the
        # same instance (Dagster's storage is multi-process safe; the pool still caps PDS writers).
        global _FORKED
        _FORKED = (defs, run_config, tags)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_execute_forked, keys))
    if quick:
        quick.record(results + skipped)
    order = {key: n for n, key in enumerate((h, m) for h in selected for m in media or MEDIA_NAMES)}
    return sorted(results + skipped, key=lambda r: order[(r.handle, r.media)]), accounts.without_account


class QuickPath:
    """Which partitions need no run because they are proven converged, and the marks after a sync.

    A partition's items are read and fingerprinted only when it holds a mark that may still be valid; the
    others are counted (to start the biggest first and to spot the empty ones). The mark a run leaves is the
    fingerprint of the items that run synced, as its record stage reports it."""

    def __init__(self, client: Any, db: Any, accounts: Any, keys: list[tuple[str, str]], full: bool):
        self.client = client
        self.state = ConvergedState(acpipeline_home())
        self.accounts = accounts
        self.rev_at_start: dict[str, str] = {}
        self.items: dict[tuple[str, str], int] = {}  # documents in MongoDB, removed ones included
        # Fingerprints that match the partition's mark, and of partitions empty on both sides (no item in
        # MongoDB, no collection on the PDS).
        self.unchanged: dict[tuple[str, str], str] = {}
        self.desired: dict[tuple[str, str], int] = {}  # of the unchanged partitions
        collections: dict[str, set[str]] = {}
        marks: dict[str, dict[str, str]] = {}
        for handle, name in keys:
            did, owner, rules = accounts.by_handle[handle].did, accounts.by_handle[handle].owner, MEDIA[name]
            if did not in self.rev_at_start:
                self.rev_at_start[did] = latest_rev(self.client, did)
                collections[did] = repo_collections(self.client, did)
                rev, marks[did] = self.state.load(did)
                if full or rev != self.rev_at_start[did]:
                    marks[did] = {}
            if name in marks[did]:
                items = extract_items(db, rules, owner)
                self.items[(handle, name)] = len(items)
                if (fingerprint := source_fingerprint(items)) == marks[did][name]:
                    self.unchanged[(handle, name)] = fingerprint
                    self.desired[(handle, name)] = sum(1 for i in items if i.wanted and i.problem is None)
            else:
                self.items[(handle, name)] = count_items(db, rules, owner)
            if not self.items[(handle, name)] and rules.nsid not in collections[did] and not full:
                self.unchanged[(handle, name)] = source_fingerprint([])

    def work(self, key: tuple[str, str]) -> float:
        """The partition's estimated work, from its documents and its media type."""
        return self.items[key] * MEDIA[key[1]].work_per_item

    def converged(self) -> list[PartitionResult]:
        out = []
        for handle, name in self.unchanged:
            n = self.desired.get((handle, name), 0)
            metadata = {"desired": n, "unchanged": n, "created": 0, "updated": 0, "deleted": 0, "failed": 0}
            out.append(PartitionResult(handle, name, True, metadata, True, skipped=True))
        return out

    def record(self, results: list[PartitionResult]) -> None:
        """Per account: the rev now and the partitions that are clean; earlier marks of partitions not in
        this sync survive only if nothing was written to the account between that sync and this one."""
        for did in self.rev_at_start:
            rev, marks = self.state.load(did)
            if rev != self.rev_at_start[did]:
                marks = {}
            for result in results:
                if self.accounts.by_handle[result.handle].did != did:
                    continue
                key = (result.handle, result.media)
                fingerprint = self.unchanged.get(key) or result.metadata.get("source_fingerprint")
                if result.clean and fingerprint:
                    marks[result.media] = fingerprint
                else:
                    marks.pop(result.media, None)
            self.state.save(did, latest_rev(self.client, did), marks)
        self.state.close()


_FORKED: tuple[Definitions, dict, dict] | None = None


def sync_workers() -> int:
    """Partition runs at once: `ACPIPELINE_SYNC_WORKERS`, default the number of cores (2 to 4)."""
    configured = os.environ.get("ACPIPELINE_SYNC_WORKERS")
    return int(configured) if configured else min(4, max(2, os.cpu_count() or 1))


def _execute_forked(key: tuple[str, str]) -> PartitionResult:
    """A partition run in a forked worker, with the worker's own instance (opened on its first run)."""
    assert _FORKED is not None
    defs, run_config, tags = _FORKED
    return _execute(defs, _worker_instance(), key, run_config, tags)


@cache
def _worker_instance() -> DagsterInstance:
    """Called only in forked workers (the parent never opens it), so each worker gets its own."""
    return DagsterInstance.get()


def log_in_ahead(client: Any, accounts: Any, keys: list[tuple[str, str]]) -> threading.Thread:
    """Sessions for the accounts of the partitions that start first, made while Dagster's instance opens:
    a login costs the PDS about 0.35 s of password hashing, otherwise waited for at the start of the
    partition's record stage. Accounts with a live saved session cost nothing. A failed login is left for
    the partition's own run to report."""
    wanted = {accounts.by_handle[handle].did: accounts.by_handle[handle].password for handle, _ in keys}

    def log_in() -> None:
        for did, password in wanted.items():
            with contextlib.suppress(Exception):  # reported by the run that needs the session
                client.session(did, password)

    thread = threading.Thread(target=log_in, name="log-in-ahead", daemon=True)
    thread.start()
    return thread


def _execute(
    defs: Definitions, instance: DagsterInstance, key: tuple[str, str], run_config: dict, tags: dict
) -> PartitionResult:
    handle, name = key
    me = psutil.Process()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key=partition_key(handle, name),
        run_config=run_config,
        raise_on_error=False,
        tags={**tags, PID_TAG: str(me.pid), STARTED_TAG: str(me.create_time())},
    )
    return _outcome(handle, name, result)


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
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        # A killed worker whose parent died too may linger as a zombie nobody reaps: it is gone as well.
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < 1.0
    except psutil.Error:
        return False


def _outcome(handle: str, media: str, result: Any) -> PartitionResult:
    metadata: dict[str, Any] = {}
    check_passed = None
    for event in result.all_events:
        if event.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION"):
            data = event.event_specific_data
            entry = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
            if entry is not None and entry.asset_key.to_user_string() == "atproto_records":
                metadata = {k: _plain(v) for k, v in entry.metadata.items()}
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            check_passed = event.event_specific_data.passed
    metadata["dry_run"] = result.dagster_run.tags.get("acpipeline/cli") == "dry-run"
    error = None
    if not result.success:
        failure = next((e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None)
        error = _root_cause(failure.event_specific_data.error) if failure else "run failed"
    return PartitionResult(handle, media, result.success, metadata, check_passed, error, result.run_id)


def _root_cause(info: Any) -> str:
    """The message of the exception beneath Dagster's own wrappers (a failed login, a missing account)."""
    while info.cause is not None and info.cls_name.startswith("Dagster"):
        info = info.cause
    return info.message.strip().splitlines()[0]


def partition_status(defs: Definitions, handles: list[str] | None) -> list[dict[str, Any]]:
    """Per partition: items MongoDB wants synced vs records on the PDS."""
    with resolved(defs, "mongo") as mongo, resolved(defs, "pds") as pds:
        return _status(mongo.db(), pds.client(), handles)


def _status(db: Any, client: Any, handles: list[str] | None) -> list[dict[str, Any]]:
    client.describe_server()  # a PDS that does not answer is named even when there is nothing to count
    accounts = find_accounts(db)
    rows = []
    unknown = [h for h in handles or [] if h not in accounts.by_handle]
    if unknown:
        raise OperatorError(f"no user with an ATProto account has the handle {', '.join(unknown)}")
    for handle in handles or sorted(accounts.by_handle):
        account = accounts.by_handle[handle]
        for name, rules in MEDIA.items():
            items = extract_items(db, rules, account.owner)
            desired = sum(1 for i in items if i.wanted and i.problem is None)
            on_pds = len(client.list_records(account.did, rules.nsid))
            rows.append({"handle": handle, "media": name, "desired": desired, "on_pds": on_pds})
    return rows
