"""Every Dagster internal acpipeline uses (acpipeline/dagster_compat.py), exercised on a real instance, so
a Dagster upgrade that changes one fails here; and the fix it applies: a run whose step waits for a pool
slot sleeps between its claims instead of spinning."""

import logging
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    Output,
    StaticPartitionsDefinition,
    asset,
    execute_job,
    in_process_executor,
    job,
    mem_io_manager,
    op,
    reconstructable,
)
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.test_utils import instance_for_test

from acpipeline import dagster_compat


def _waiting_context(timeouts: dict[str, float] | None = None) -> InstanceConcurrencyContext:
    """Steps waiting for a pool slot, each until its back-off ends (default: one step, 5 s from now)."""
    context = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    context._pending_timeouts = timeouts or {"step": time.time() + 5}
    context._pending_claims = set(context._pending_timeouts)
    return context


def test_dagster_still_has_the_spinning_wait():
    # When this fails, Dagster fixed it upstream: drop acpipeline/dagster_compat.py and this test.
    assert dagster_compat._DAGSTERS_OWN(_waiting_context()) <= 0


def test_the_fix_waits_until_the_next_claim(monkeypatch):
    now = 1_700_000_000.0  # the fix's clock, stopped: the waits are exact, however busy the machine
    monkeypatch.setattr(dagster_compat, "time", SimpleNamespace(time=lambda: now))
    wait = dagster_compat.interval_to_next_pending_claim_check
    assert wait(_waiting_context({"step": now + 5})) == 5.0
    assert wait(_waiting_context({"step": now + 5, "other": now + 2.5})) == 2.5  # the first back-off to end
    assert wait(_waiting_context({"step": now + 5, "late": now - 1})) == 0.0  # one may be tried now
    idle = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    idle._pending_claims, idle._pending_timeouts = set(), {}
    assert dagster_compat.interval_to_next_pending_claim_check(idle) == 0


@op(pool="writes")
def write() -> None:
    pass


@job(executor_def=dagster_compat.run_executor)
def one_write():
    write()


def test_a_run_waiting_for_a_pool_slot_does_not_spin(monkeypatch):
    """Another run holds the pool's only slot for 3 s; the waiting run's executor loop goes round a few
    times (once per back-off), not thousands. The run goes through its job's own executor, as a launched run
    does (`execute_in_process` would put Dagster's in its place), starting from Dagster's spinning wait."""
    monkeypatch.setattr(
        InstanceConcurrencyContext, "interval_to_next_pending_claim_check", dagster_compat._DAGSTERS_OWN
    )
    rounds = 0
    own_next_step = ActiveExecution.get_next_step

    def counted(self):
        nonlocal rounds
        rounds += 1
        return own_next_step(self)

    monkeypatch.setattr(ActiveExecution, "get_next_step", counted)

    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("writes")
        assert storage.claim_concurrency_slot("writes", "other-run", "other-step").is_claimed
        release = threading.Timer(3, storage.free_concurrency_slot_for_step, ("other-run", "other-step"))
        release.start()
        try:
            with execute_job(reconstructable(one_write), instance=instance) as result:
                assert result.success
        finally:
            release.cancel()
    assert rounds < 50, f"{rounds} rounds of the executor loop while waiting 3 s for a slot"


def test_the_code_location_runs_its_jobs_with_the_fixed_executor_and_patches_nothing_on_import():
    from acpipeline.definitions import defs
    from acpipeline.operations.jobs import SYNC_JOB_NAME
    from acpipeline.operations.wipe import WIPE_JOB_NAME

    names = (SYNC_JOB_NAME, WIPE_JOB_NAME)
    jobs = [defs.resolve_implicit_global_asset_job_def(), *(defs.resolve_job_def(name) for name in names)]
    assert all(job.executor_def is dagster_compat.run_executor for job in jobs), [j.name for j in jobs]
    probe = (
        "import acpipeline.definitions\n"
        "from acpipeline import dagster_compat as c\n"
        "print(c.InstanceConcurrencyContext.interval_to_next_pending_claim_check is c._DAGSTERS_OWN)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]


def test_the_key_value_store_keeps_what_the_sensor_stores():
    with instance_for_test() as instance:
        dagster_compat.kv_set(instance, {"acpipeline/a": "1", "acpipeline/b": "x" * 10_000})
        dagster_compat.kv_set(instance, {"acpipeline/a": "2"})
        assert dagster_compat.kv_get(instance, {"acpipeline/a", "acpipeline/b", "missing"}) == {
            "acpipeline/a": "2",
            "acpipeline/b": "x" * 10_000,
        }


def test_a_killed_runs_pool_slots_can_be_freed():
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("writes")
        assert storage.claim_concurrency_slot("writes", "killed-run", "step").is_claimed
        assert not storage.claim_concurrency_slot("writes", "next-run", "step").is_claimed
        dagster_compat.free_pool_slots(instance, "killed-run")
        assert storage.claim_concurrency_slot("writes", "next-run", "step").is_claimed


def test_daemon_heartbeats_are_read_as_the_daemon_writes_them():
    from dagster._daemon.types import DaemonHeartbeat

    with instance_for_test() as instance:
        assert dagster_compat.daemon_heartbeats(instance) == {}
        instance.add_daemon_heartbeat(DaemonHeartbeat(1_700_000_000.5, "SENSOR", "daemon-1"))
        instance.add_daemon_heartbeat(DaemonHeartbeat(1_700_000_030.5, "SENSOR", "daemon-1"))
        assert dagster_compat.daemon_heartbeats(instance) == {"SENSOR": 1_700_000_030.5}


def test_the_workspace_and_backfill_entry_points_the_probe_drives(tmp_path):
    """The scale probe's path: the project's workspace loads as the webserver loads it, a backfill launched
    through the UI's GraphQL, and one pass of the backfill daemon turns its partitions into runs (queued:
    no daemon dequeues them here)."""
    from dagster import RunsFilter
    from dagster_graphql.test.utils import execute_dagster_graphql

    from acpipeline.bench.backfill_pass import LAUNCH
    from acpipeline.bench.scale_probe import PROJECT

    queued = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    with (
        instance_for_test(overrides={"run_coordinator": queued}) as instance,
        dagster_compat.workspace_context(instance, str(PROJECT / "workspace.yaml")) as process,
    ):
        context = process.create_request_context()
        locations = [entry.origin.location_name for entry in context.get_code_location_entries().values()]
        assert locations == ["acpipeline.definitions"], locations
        instance.add_dynamic_partitions("handle", ["a.test", "b.test"])
        keys = ["a.test|mood", "b.test|mood"]
        assets = [{"path": [name]} for name in ("source_items", "media_blobs", "atproto_records")]
        params = {"assetSelection": assets, "partitionNames": keys}
        answer = execute_dagster_graphql(context, LAUNCH, {"params": params})
        launched = answer.data["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill = {"dagster/backfill": launched["backfillId"]}
        assert instance.get_runs(RunsFilter(tags=backfill)) == []  # launching it made no run yet

        errors = [e for e in dagster_compat.backfill_iteration(process, logging.getLogger("test")) if e]
        assert errors == []
        runs = instance.get_runs(RunsFilter(tags=backfill))
        assert len(runs) == 1 and runs[0].status == DagsterRunStatus.QUEUED, runs  # one range run
        tags = runs[0].tags
        ranged = (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
        assert ranged == tuple(keys), tags


BATCHED_PARTITIONS = StaticPartitionsDefinition([f"user{i}|mood" for i in range(20)])
HOLDS = AssetCheckSpec("holds", asset="batched")


@asset(partitions_def=BATCHED_PARTITIONS, check_specs=[HOLDS], output_required=False)
def batched(context: AssetExecutionContext):
    """As the record stage: each partition's materialization and check evaluation, logged as one batch."""
    events: list = []
    for key in context.partition_keys:
        events.append(AssetMaterialization(asset_key=context.asset_key, partition=key))
        events.append(
            AssetCheckEvaluation(asset_key=context.asset_key, check_name="holds", passed=True, partition=key)
        )
    yield from dagster_compat.log_as_batch(context, events)
    yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(HOLDS.key))


@pytest.mark.parametrize("storage", ["ours", "dagsters"])
def test_log_as_batch_hands_the_step_events_over_at_once(tmp_path, monkeypatch, capfd, storage):
    """A range run's events reach the event log's `store_event_batch` together: with ours on SQLite the check
    evaluations too; with Dagster's own storage (which refuses them in a batch) the materializations, and
    each check evaluation alone, with no failed batch. Every partition materialized and checked."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from acpipeline.event_log import PooledSqliteEventLogStorage
    from acpipeline.instance import PROJECT_DAGSTER_YAML

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "500")
    if storage == "ours":
        shutil.copy(PROJECT_DAGSTER_YAML, tmp_path / "dagster.yaml")
    kind = PooledSqliteEventLogStorage if storage == "ours" else SqliteEventLogStorage
    batches: list[list[str]] = []
    original = kind.store_event_batch

    def counted(self, events):
        batches.append([event.dagster_event.event_type_value for event in events])
        original(self, events)

    monkeypatch.setattr(kind, "store_event_batch", counted)
    job = Definitions(
        assets=[batched], executor=in_process_executor, resources={"io_manager": mem_io_manager}
    ).resolve_implicit_global_asset_job_def()
    keys = BATCHED_PARTITIONS.get_partition_keys()
    with DagsterInstance.get() as instance:
        assert type(instance.event_log_storage) is kind
        result = job.execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        )
        assert result.success
        ours = [batch for batch in batches if "ASSET_CHECK_EVALUATION" in batch or len(batch) == 20]
        if storage == "ours":
            assert ours == [["ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"] * 20], batches
        else:
            assert ours == [["ASSET_MATERIALIZATION"] * 20], batches
        assert instance.get_materialized_partitions(AssetKey("batched")) == set(keys)
        history = instance.event_log_storage.get_asset_check_execution_history(HOLDS.key, limit=100)
        passed = {record.partition for record in history if record.status.value == "SUCCEEDED"}
        assert passed == set(keys)
        assert len(result.get_asset_materialization_events()) == 20  # the run's own result sees them
    assert "Exception while storing event batch" not in capfd.readouterr().err
