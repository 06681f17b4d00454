"""What the Dagster instance says of a pass's runs (tag `dagster/backfill`): their statuses, partitions,
durations, start-up from launch to RUN_START, failures, and planned events.

After each pass the bench counts the `ASSET_MATERIALIZATION_PLANNED` events of every run in the instance
(`planned_events_per_run`): with Dagster's settings for range runs in force a run over a range has one per
asset, without them one per asset and partition."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

if TYPE_CHECKING:
    from dagster import DagsterInstance


def _planned_events(instance: DagsterInstance, run_ids: list[str]) -> dict[str, Any]:
    """The ASSET_MATERIALIZATION_PLANNED events of each run: one per asset with Dagster's settings for
    range runs in force where the run was created, one per asset and partition without them."""
    from dagster import DagsterEventType

    counts = [
        len(
            instance.get_records_for_run(
                run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            ).records
        )
        for run_id in run_ids
    ]
    return {
        "max": max(counts, default=0),
        "min": min(counts, default=0),
        "total": sum(counts),
        "runs": len(counts),
    }


def _run_failures(instance: DagsterInstance, run_ids: list[str], limit: int = 10) -> list[str]:
    """The first failure message of each failed run (step failures first)."""
    from dagster import DagsterEventType

    out = []
    for run_id in run_ids[:limit]:
        events = instance.all_logs(
            run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        )
        messages = []
        for event in events:
            data = event.dagster_event.event_specific_data if event.dagster_event else None
            error = getattr(data, "error", None)
            dagster_event = event.dagster_event
            text = error.message if error is not None else ((dagster_event and dagster_event.message) or "")
            messages.append(f"{event.step_key or 'run'}: {text.strip()[:600]}")
        out.append(f"{run_id}: " + (" | ".join(messages) or "no failure event"))
    return out


def _launch_to_start(instance: DagsterInstance, record: Any) -> float:
    """Seconds from the run's launch (its RUN_STARTING event) to its RUN_START."""
    from dagster import DagsterEventType

    starting = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.PIPELINE_STARTING)
    return record.start_time - starting[0].timestamp if starting else 0.0


def _percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))], 2)


def _pass_runs(instance: DagsterInstance, backfill_id: str, order: list[str]) -> dict[str, Any]:
    """The pass's runs from the instance: statuses, partitions per run, and where the wall time went."""
    from dagster import DagsterRunStatus, RunsFilter

    from acpipeline.sync.deferral import DEFERRED_TAG
    from acpipeline.sync.partitions import RANGE_END_TAG, RANGE_START_TAG, range_members

    records = instance.get_run_records(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    statuses = Counter(r.dagster_run.status.value for r in records)
    sizes = []
    for record in records:
        tags = record.dagster_run.tags
        if RANGE_START_TAG in tags:
            sizes.append(len(range_members(order, tags[RANGE_START_TAG], tags[RANGE_END_TAG])))
        else:
            sizes.append(1)
    durations = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    created = [r.create_timestamp.timestamp() for r in records]
    failed = [r.dagster_run.run_id for r in records if r.dagster_run.status != DagsterRunStatus.SUCCESS]
    origin = min(created, default=0.0)
    launched_to_start = sorted(_launch_to_start(instance, r) for r in records if r.start_time)
    timeline: list[dict[str, Any]] = sorted(
        (
            {
                "media": record.dagster_run.tags.get(RANGE_START_TAG, "|?").rpartition("|")[2],
                "partitions": size,
                "started_s": round(record.start_time - origin, 1),
                "took_s": round(record.end_time - record.start_time, 1),
            }
            for record, size in zip(records, sizes, strict=True)
            if record.start_time and record.end_time
        ),
        key=lambda run: float(run["started_s"]),
    )

    return {
        "runs": len(records),
        "run_ids": [r.dagster_run.run_id for r in records],
        "deferred_runs": sum(r.dagster_run.tags.get(DEFERRED_TAG) == "true" for r in records),
        # runs the Celery launcher sent to a worker (the others: processes of the code server)
        "runs_in_celery_workers": sum(DAGSTER_CELERY_TASK_ID_TAG in r.dagster_run.tags for r in records),
        # from the launch (RUN_STARTING) to RUN_START, the run's process up and its code loaded
        "run_start_s_p50": _percentile(launched_to_start, 0.5),
        "run_start_s_p90": _percentile(launched_to_start, 0.9),
        "statuses": dict(statuses),
        "failed_run_ids": failed,
        "partitions_per_run_max": max(sizes, default=0),
        "partitions_in_runs": sum(sizes),
        "run_s_median": round(statistics.median(durations), 2) if durations else 0.0,
        "run_s_max": round(max(durations), 2) if durations else 0.0,
        "first_run_created": min(created, default=0.0),
        "first_run_started": min(starts, default=0.0),
        "last_run_ended": max(ends, default=0.0),
        "timeline": timeline,  # each run's media, size, start (from the first run's creation) and length
    }
