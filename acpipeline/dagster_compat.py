"""Where acpipeline reaches past Dagster's public API (Dagster 1.13), in one place. Each use is pinned by
`acpipeline_tests/test_dagster_compat.py`, so a Dagster upgrade that changes one fails there, loudly:
- `apply_fixes`: a fix to Dagster's executor (below), applied by `run_executor` in every process that
  executes a run (the code location's runs, in any launcher) and by the command line's sync before its runs;
- `kv_get` / `kv_set`: the instance's key-value store (the sensor keeps its state there; Dagster's own
  daemons keep their cursors there);
- `free_pool_slots`: the pool slots a killed in-process run still holds;
- `daemon_heartbeats`: when each of the instance's daemons last reported (`acpipeline doctor`);
- `workspace_context` / `backfill_iteration`: what the scale probe drives directly;
- `log_as_batch`: a step's own events handed to the event log as one batch, as Dagster does only for a range
  output's materializations (the record stage's per-partition events were two fifths of a no-op run's CPU).

Three plug-ins subclass Dagster's classes by design, named in the instance's dagster.yaml:
`acpipeline/event_log.py` (SQLite) and `acpipeline/postgres_storage.py` (deploy/dagster.yaml), the storages;
`acpipeline/settings_loader.py`, the secrets hook that hands the settings file to code servers and runs.

The fix. A step waiting for a pool slot (our record stage, in the `pds_writes` pool) spins. Dagster's executor
loop sleeps for `InstanceConcurrencyContext.interval_to_next_pending_claim_check()`, which returns
`min([0, *(ready_at - now ...)])`: never more than zero. So while a slot is taken, each waiting run polls
without sleeping, on a full core, although it only asks the database again once its back-off (1 s,
growing to 15 s) has passed: waiting runs take CPU from the working ones on the same cores. Dagster saw it
too (dagster-io/dagster#20367, closed unmerged). The fix returns the time until the first
back-off ends, so the loop sleeps exactly until Dagster would look again: the same claims, at the same
moments, without the spinning. When a Dagster release fixes it, the test says so and the fix goes."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    Executor,
    ExecutorDefinition,
    InitExecutorContext,
    in_process_executor,
)
from dagster._core.events import (
    DagsterEvent,
    DagsterEventBatchMetadata,
    DagsterEventType,
    generate_event_batch_id,
)
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

if TYPE_CHECKING:
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster_shared.error import SerializableErrorInfo

_DAGSTERS_OWN = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim may be tried again (0 when one may be tried now)."""
    timeouts: Collection[float] = self._pending_timeouts.values() if self._pending_claims else ()
    if not timeouts:
        return 0.0
    return max(0.0, min(timeouts) - time.time())


def apply_fixes() -> None:
    """Patch Dagster's executor in this process so runs waiting for a pool slot sleep instead of spinning;
    idempotent."""
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]


def _fixed_in_process_executor(init_context: InitExecutorContext) -> Executor:
    apply_fixes()
    create = in_process_executor.executor_creation_fn
    assert create is not None
    return create(init_context)


# Dagster's in-process executor, made in the run's own process after the fix is applied there: no import of
# the code location patches Dagster, and every run that waits for a pool slot has the fix.
run_executor = ExecutorDefinition(
    name=in_process_executor.name,
    config_schema=in_process_executor.config_schema.as_field(),
    executor_creation_fn=_fixed_in_process_executor,
    description=in_process_executor.description,
)


def kv_get(instance: DagsterInstance, keys: set[str]) -> Mapping[str, str]:
    """Values of the instance's key-value store (keys not stored are left out)."""
    return instance.daemon_cursor_storage.get_cursor_values(keys)


def kv_set(instance: DagsterInstance, pairs: dict[str, str]) -> None:
    """Store values in the instance's key-value store, replacing what those keys held."""
    instance.daemon_cursor_storage.set_cursor_values(pairs)


def free_pool_slots(instance: DagsterInstance, run_id: str) -> None:
    """Release every pool slot the run holds (Dagster frees them when a run ends; a killed process never
    ends its run)."""
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def daemon_heartbeats(instance: DagsterInstance) -> dict[str, float]:
    """The latest heartbeat of each daemon type that ever ran on the instance, as epoch seconds."""
    return {kind: beat.timestamp for kind, beat in instance.get_daemon_heartbeats().items()}


def workspace_context(instance: DagsterInstance, workspace_yaml: str) -> WorkspaceProcessContext:
    """A workspace process context over a workspace file, as the webserver and the daemon make one."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    return WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[workspace_yaml]))


def backfill_iteration(
    process: WorkspaceProcessContext, logger: logging.Logger
) -> list[SerializableErrorInfo | None]:
    """One pass of the backfill daemon over the instance's backfills."""
    from dagster._daemon.backfill import execute_backfill_iteration

    return list(execute_backfill_iteration(process, logger))


def log_as_batch(
    context: AssetExecutionContext,
    events: Sequence[AssetMaterialization | AssetObservation | AssetCheckEvaluation],
) -> list[DagsterEvent]:
    """Log the step's events as Dagster logs a range output's materializations: with batch metadata, so the
    instance stores them at once when `DAGSTER_EVENT_BATCH_SIZE` is set (one by one otherwise). They are
    stored before this returns; the step yields the returned events, which Dagster passes on as logged.
    Check evaluations join the batch only where the event log takes them in one (ours on SQLite); Dagster's
    own storages accept only asset events in a batch, so there each is logged alone, as Dagster would.
    Not for blocking checks: Dagster fails a step on one only when the step yields the evaluation itself."""
    step = context.get_step_execution_context()
    batched = getattr(context.instance.event_log_storage, "batches_check_evaluations", False)
    together = [event for event in events if batched or not isinstance(event, AssetCheckEvaluation)]
    alone = [event for event in events if not batched and isinstance(event, AssetCheckEvaluation)]
    batch_id: str = generate_event_batch_id()  # type: ignore[no-untyped-call]  # unannotated in Dagster: a uuid4 string
    logged = []
    for index, event in enumerate(together):
        batch = DagsterEventBatchMetadata(batch_id, index == len(together) - 1)
        if isinstance(event, AssetMaterialization):
            logged.append(DagsterEvent.asset_materialization(step, event, batch))
        elif isinstance(event, AssetObservation):
            logged.append(DagsterEvent.asset_observation(step, event, batch))
        else:  # Dagster's `DagsterEvent.asset_check_evaluation`, with the batch
            logged.append(
                DagsterEvent.from_step(
                    DagsterEventType.ASSET_CHECK_EVALUATION,
                    step,
                    event,
                    f"Asset check '{event.check_name}' on '{event.asset_key.to_user_string()}' "
                    + ("passed." if event.passed else "did not pass.")
                    + ("" if event.description is None else f" Description: '{event.description}'"),
                    batch,
                )
            )
    return logged + [DagsterEvent.asset_check_evaluation(step, event) for event in alone]
