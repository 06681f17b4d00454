"""Whether the sensor and the schedule start running on a fresh Dagster instance.

`ACPIPELINE_AUTOMATION=stopped` starts them stopped (tests that run the daemon, or an operator who wants to
switch them on by hand in the UI); anything else, or unset, starts them running. Once an operator has
started or stopped one in the UI, the instance remembers that and this default no longer applies.
"""

import os

from dagster import DefaultScheduleStatus, DefaultSensorStatus


def automation_running() -> bool:
    return os.environ.get("ACPIPELINE_AUTOMATION", "running").strip().lower() != "stopped"


def default_sensor_status() -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if automation_running() else DefaultSensorStatus.STOPPED


def default_schedule_status() -> DefaultScheduleStatus:
    return DefaultScheduleStatus.RUNNING if automation_running() else DefaultScheduleStatus.STOPPED
