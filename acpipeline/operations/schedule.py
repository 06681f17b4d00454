"""The scheduled reconcile: every partition of every current account, nightly by default.

Run requests over partition ranges: whole accounts (all five media) per run, `PARTITIONS_PER_RUN`
partitions a run, so the platform's 978 accounts are about 50 runs, not 4,890. Inside each run a partition
proven converged (its source and repository unchanged since its last clean sync) is recognised cheaply and
skipped; the rest are listed and reconciled.

Every night one seventh of the accounts (a contiguous slice of the registered handles, by the day) is
re-checked in full, proof or not (run tag `acpipeline/full`): every partition is re-checked in full at least
once a week, which catches what the proof cannot see (a recording ZIP uploaded later, a replaced image).
The cron comes from `ACPIPELINE_SYNC_CRON` (default `0 3 * * *`, UTC, or `ACPIPELINE_SYNC_TIMEZONE`), the
length of the full re-check cycle from `ACPIPELINE_FULL_RECHECK_DAYS` (default 7), read when the code location
loads.
"""

import math
import os
from datetime import date

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.operations.automation import default_schedule_status
from acpipeline.operations.jobs import sync_job
from acpipeline.resources.mongo import MongoResource
from acpipeline.sync.extract import find_accounts
from acpipeline.sync.partitions import FULL_TAG, handle_partitions, partition_ranges, register_handles

DEFAULT_SYNC_CRON = "0 3 * * *"
DEFAULT_RECHECK_DAYS = 7


def sync_cron() -> str:
    return os.environ.get("ACPIPELINE_SYNC_CRON", "").strip() or DEFAULT_SYNC_CRON


def recheck_days() -> int:
    configured = os.environ.get("ACPIPELINE_FULL_RECHECK_DAYS", "").strip()
    return max(1, int(configured)) if configured.isdigit() else DEFAULT_RECHECK_DAYS


def full_recheck_slice(handles: list[str], day: date, days: int) -> set[str]:
    """The handles re-checked in full on `day`: slice `day % days` of `days` contiguous slices."""
    size = math.ceil(len(handles) / days) if handles else 0
    n = day.toordinal() % days
    return set(handles[n * size : (n + 1) * size])


def reconcile_requests(context: ScheduleEvaluationContext, db) -> list[RunRequest] | SkipReason:
    register_handles(context.instance, db)
    current = find_accounts(db).by_handle
    registered = context.instance.get_dynamic_partitions(handle_partitions.name)
    handles = [h for h in registered if h in current]
    gone = len(registered) - len(handles)
    if gone:
        context.log.info(f"{gone} registered handles have no ATProto account in MongoDB any more: skipped")
    if not handles:
        return SkipReason("no user in MongoDB has an ATProto account")
    when = context.scheduled_execution_time
    stamp = when.isoformat() if when else "manual"
    full = full_recheck_slice(handles, when.date() if when else date.today(), recheck_days())
    requests = []
    for subset, tags in ((full, {FULL_TAG: "true"}), (set(handles) - full, {})):
        wanted = [(h, m) for h in handles if h in subset for m in MEDIA_NAMES]
        for partition_range in partition_ranges(registered, wanted, media_together=True):
            requests.append(
                RunRequest(
                    # One request per range and tick: a retried tick never launches a range twice.
                    run_key=f"reconcile:{stamp}:{partition_range.start}",
                    tags={"acpipeline/trigger": "schedule", **tags, **partition_range.tags()},
                )
            )
    context.log.info(f"{len(handles)} accounts in {len(requests)} runs, {len(full)} re-checked in full")
    return requests


@schedule(
    name="reconcile_schedule",
    job=sync_job,
    cron_schedule=sync_cron(),
    execution_timezone=os.environ.get("ACPIPELINE_SYNC_TIMEZONE", "").strip() or "UTC",
    default_status=default_schedule_status(),
    description="Reconcile every partition of every account (cron from ACPIPELINE_SYNC_CRON, nightly by "
    "default), whole accounts in runs of 100 partitions; partitions proven converged are skipped inside "
    "the run, except a seventh of the accounts each night, re-checked in full.",
)
def reconcile_schedule(context: ScheduleEvaluationContext, mongo: MongoResource):
    return reconcile_requests(context, mongo.db())
