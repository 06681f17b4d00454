"""Whether the sensor and the schedule start running on a fresh Dagster instance.

`ACPIPELINE_AUTOMATION=stopped` starts them stopped (tests that run the daemon, or an operator who wants to
switch them on by hand in the UI); anything else, or unset, starts them running. Once an operator has
started or stopped one in the UI, the instance remembers that and this default no longer applies.
"""

import os

from dagster import DefaultScheduleStatus, DefaultSensorStatus


def automation_running() -> bool:
    """False only when ACPIPELINE_AUTOMATION is `stopped` (any case); unset means running."""
    return os.environ.get("ACPIPELINE_AUTOMATION", "running").strip().lower() != "stopped"


def default_sensor_status() -> DefaultSensorStatus:
    """The sensor's status on a fresh instance; once an operator switches it in the UI, the instance keeps
    theirs."""
    return DefaultSensorStatus.RUNNING if automation_running() else DefaultSensorStatus.STOPPED


def default_schedule_status() -> DefaultScheduleStatus:
    """The schedule's status on a fresh instance; once an operator switches it in the UI, the instance keeps
    theirs."""
    return DefaultScheduleStatus.RUNNING if automation_running() else DefaultScheduleStatus.STOPPED
