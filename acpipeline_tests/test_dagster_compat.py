"""Every Dagster internal acpipeline uses (acpipeline/dagster_compat.py), exercised on a real instance, so
a Dagster upgrade that changes one fails here; and the fix it applies: a run whose step waits for a pool
slot sleeps between its claims instead of spinning."""

import logging
import threading
import time

from dagster import job, op
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.test_utils import instance_for_test

from acpipeline import dagster_compat


def _waiting_context() -> InstanceConcurrencyContext:
    context = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    context._pending_claims = {"step"}
    context._pending_timeouts = {"step": time.time() + 5}
    return context


def test_dagster_still_has_the_spinning_wait():
    # When this fails, Dagster fixed it upstream: drop acpipeline/dagster_compat.py and this test.
    assert dagster_compat._DAGSTERS_OWN(_waiting_context()) <= 0


def test_the_fix_waits_until_the_next_claim():
    wait = dagster_compat.interval_to_next_pending_claim_check(_waiting_context())
    assert 4 < wait <= 5
    idle = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    idle._pending_claims, idle._pending_timeouts = set(), {}
    assert dagster_compat.interval_to_next_pending_claim_check(idle) == 0


def test_a_run_waiting_for_a_pool_slot_does_not_spin(monkeypatch):
    """Another run holds the pool's only slot for 3 s; the waiting run's executor loop goes round a few
    times (once per back-off), not thousands."""
    import acpipeline.definitions  # noqa: F401  (applies the fix, as in every run)

    rounds = 0
    own_next_step = ActiveExecution.get_next_step

    def counted(self):
        nonlocal rounds
        rounds += 1
        return own_next_step(self)

    monkeypatch.setattr(ActiveExecution, "get_next_step", counted)

    @op(pool="writes")
    def write() -> None:
        pass

    @job
    def one_write():
        write()

    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("writes")
        assert storage.claim_concurrency_slot("writes", "other-run", "other-step").is_claimed
        release = threading.Timer(3, storage.free_concurrency_slot_for_step, ("other-run", "other-step"))
        release.start()
        try:
            result = one_write.execute_in_process(instance=instance)
        finally:
            release.cancel()
        assert result.success
    assert rounds < 50, f"{rounds} rounds of the executor loop while waiting 3 s for a slot"


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
    from acpipeline.operations.scale_probe import PROJECT

    with (
        instance_for_test() as instance,
        dagster_compat.workspace_context(instance, str(PROJECT / "workspace.yaml")) as process,
    ):
        context = process.create_request_context()
        assert [entry.origin.location_name for entry in context.get_code_location_entries().values()]
        assert dagster_compat.backfill_iteration(process, logging.getLogger("test")) is not None
