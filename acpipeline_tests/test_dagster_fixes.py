"""The fix acpipeline applies to Dagster (acpipeline/dagster_fixes.py): a run whose step waits for a pool slot
sleeps between its claims instead of spinning."""

import threading
import time

from dagster import job, op
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.test_utils import instance_for_test

from acpipeline import dagster_fixes


def _waiting_context() -> InstanceConcurrencyContext:
    context = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    context._pending_claims = {"step"}
    context._pending_timeouts = {"step": time.time() + 5}
    return context


def test_dagster_still_has_the_spinning_wait():
    # When this fails, Dagster fixed it upstream: drop acpipeline/dagster_fixes.py and this test.
    assert dagster_fixes._DAGSTERS_OWN(_waiting_context()) <= 0


def test_the_fix_waits_until_the_next_claim():
    wait = dagster_fixes.interval_to_next_pending_claim_check(_waiting_context())
    assert 4 < wait <= 5
    idle = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    idle._pending_claims, idle._pending_timeouts = set(), {}
    assert dagster_fixes.interval_to_next_pending_claim_check(idle) == 0


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
