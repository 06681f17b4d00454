"""The scheduled reconcile: every partition of every current account, nightly by default.

Every night one seventh of the accounts (a contiguous slice of the registered handles, by the day) is
re-checked in full, proof or not (run tag `acpipeline/full`), whole accounts (all six media) per run: every
partition is re-checked in full at least once a week, which catches what the proof cannot see (a recording
ZIP uploaded later, a replaced image). Of the other partitions the tick proves which are converged (their
source and repository unchanged since their last clean sync: `prove_selection`, as `acpipeline sync` does)
and requests runs for the rest only, as ranges of at most `PARTITIONS_PER_RUN`. A proven partition gets no
new run and no new event: its history keeps its last real sync.
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
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.pds import PdsClient, PdsResource
from acpipeline.sync.converged import prove_selection
from acpipeline.sync.extract import find_accounts
from acpipeline.sync.partitions import (
    FULL_TAG,
    HANDLE_PARTITIONS,
    PartitionRange,
    few_ranges,
    partition_ranges,
    register_handles,
)

DEFAULT_SYNC_CRON = "0 3 * * *"
DEFAULT_RECHECK_DAYS = 7


def sync_cron() -> str:
    """The reconcile's cron: ACPIPELINE_SYNC_CRON, else nightly; read once, as the code location loads."""
    return os.environ.get("ACPIPELINE_SYNC_CRON", "").strip() or DEFAULT_SYNC_CRON


def recheck_days() -> int:
    """Days in which every account is re-checked in full once: ACPIPELINE_FULL_RECHECK_DAYS, at least 1;
    anything but a whole number means the default."""
    configured = os.environ.get("ACPIPELINE_FULL_RECHECK_DAYS", "").strip()
    return max(1, int(configured)) if configured.isdigit() else DEFAULT_RECHECK_DAYS


def full_recheck_slice(handles: list[str], day: date, days: int) -> set[str]:
    """The handles re-checked in full on `day`: slice `day % days` of `days` contiguous slices."""
    size = math.ceil(len(handles) / days) if handles else 0
    n = day.toordinal() % days
    return set(handles[n * size : (n + 1) * size])


def reconcile_requests(
    context: ScheduleEvaluationContext, db: MongoDatabase, client: PdsClient
) -> list[RunRequest] | SkipReason:
    """One tick's runs: today's slice of accounts in full, other partitions only where not proven converged;
    SkipReason when none is due. A retried tick requests the same run keys."""
    register_handles(context.instance, db)
    accounts = find_accounts(db)
    registered = context.instance.get_dynamic_partitions(HANDLE_PARTITIONS)
    handles = [h for h in registered if h in accounts.by_handle]
    gone = len(registered) - len(handles)
    if gone:
        context.log.info(f"{gone} registered handles have no ATProto account in MongoDB any more: skipped")
    if not handles:
        return SkipReason("no user in MongoDB has an ATProto account")
    when = context.scheduled_execution_time
    stamp = when.isoformat() if when else "manual"
    full = full_recheck_slice(handles, when.date() if when else date.today(), recheck_days())
    # The others: only the partitions not proven converged now (the runs check the proof again).
    rest = [(h, m) for h in handles if h not in full for m in MEDIA_NAMES]
    _, proven = prove_selection(client, db, accounts, rest)
    batches: tuple[tuple[list[PartitionRange], dict[str, str]], ...] = (
        (partition_ranges(registered, [(h, m) for h in handles if h in full for m in MEDIA_NAMES],
                          media_together=True), {FULL_TAG: "true"}),
        (few_ranges(registered, [k for k in rest if k not in proven]), {}),
    )  # fmt: skip
    requests = [
        RunRequest(
            # One request per range and tick: a retried tick never launches a range twice.
            run_key=f"reconcile:{stamp}:{partition_range.start}:{partition_range.end}",
            tags={"acpipeline/trigger": "schedule", **tags, **partition_range.tags()},
        )
        for ranges, tags in batches
        for partition_range in ranges
    ]
    context.log.info(
        f"{len(handles)} accounts: {len(full)} re-checked in full, {len(proven)} of the other partitions "
        f"proven converged; {len(requests)} runs"
    )
    return requests or SkipReason(f"all {len(proven)} partitions proven converged; none due a full re-check")


@schedule(
    name="reconcile_schedule",
    job=sync_job,
    cron_schedule=sync_cron(),
    execution_timezone=os.environ.get("ACPIPELINE_SYNC_TIMEZONE", "").strip() or "UTC",
    default_status=default_schedule_status(),
    description="Reconcile every account (cron from ACPIPELINE_SYNC_CRON, nightly by default): a seventh "
    "of the accounts re-checked in full each night, and of the others every partition not proven converged, "
    "in runs of up to 250 partitions.",
)
def reconcile_schedule(
    context: ScheduleEvaluationContext, mongo: MongoResource, pds: PdsResource
) -> list[RunRequest] | SkipReason:
    """The schedule around `reconcile_requests`, with the resources it reads from."""
    return reconcile_requests(context, mongo.db(), pds.client())
