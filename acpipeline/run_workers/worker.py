"""The run workers' Celery app (deploy/celery/Procfile): `celery -A acpipeline.run_workers.worker worker`.

The app is the one the instance's run launcher sends to (its broker, result backend, queue and settings,
from `$DAGSTER_HOME/dagster.yaml`), with Dagster's run tasks. The code location is imported here, once, in
the worker's main process before its pool forks: every run in the worker starts with Dagster and acpipeline
already imported, where the default launcher starts a new Python process per run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun
from dagster import DagsterError, DagsterInstance
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from acpipeline.run_workers.launcher import CeleryRunLauncher

UNSET = re.compile(r'environment variable "(\w+)" which is not set')


def _launcher_settings() -> dict[str, Any]:
    """The instance's CeleryRunLauncher settings; a plain line (no traceback) when the instance has none."""
    try:
        with DagsterInstance.get() as instance:
            launcher = instance.run_launcher
            # The instance's settings file, before the code location loads (as a code server gets it).
            instance.inject_env_vars(None)
    except DagsterError as error:  # no DAGSTER_HOME, or its dagster.yaml names a variable that is not set
        unset = UNSET.search(str(error))
        reason = (
            f"{unset.group(1)} is not set (dagster.yaml reads it)" if unset else str(error).splitlines()[0]
        )
        raise SystemExit(f"acpipeline worker: {reason}") from None
    if not isinstance(launcher, CeleryRunLauncher):
        raise SystemExit(
            f"acpipeline worker: $DAGSTER_HOME/dagster.yaml runs runs with {type(launcher).__name__}; a "
            "Celery worker needs the run_launcher of deploy/celery/run_launcher.yaml appended to it"
        )
    return launcher.app_args()


def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


MALLOC_TRIM = _libc_malloc_trim()


def _give_back_freed_memory(**_: object) -> None:
    """After each run: a run's big buffers (images, ZIPs, MP4s) are freed when it ends, but glibc keeps
    their pages for later allocations; a process that lives for many runs gives them back to the system
    (what a new process per run got for free)."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


task_postrun.connect(_give_back_freed_memory)  # as `@task_postrun.connect` would (Celery is untyped)

app = make_app(_launcher_settings())  # type: ignore[no-untyped-call]  # unannotated in dagster_celery
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)

import acpipeline.definitions  # noqa: E402, F401 - warm: imported before the pool forks
