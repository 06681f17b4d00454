"""Operations around the sync: wiping an account, the new-content sensor, the scheduled reconcile."""

from acpipeline.operations.jobs import sync_job
from acpipeline.operations.schedule import reconcile_schedule
from acpipeline.operations.sensor import new_content_sensor
from acpipeline.operations.wipe import run_wipe, wipe_job

__all__ = ["new_content_sensor", "reconcile_schedule", "run_wipe", "sync_job", "wipe_job"]
