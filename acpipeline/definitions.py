"""The Dagster code location: assets, checks, jobs, sensors and schedules, wired to resources from the
environment (`MONGODB_CONNECTION_STRING`, `MONGODB_NAME`, `PDS_URL`, `PDS_ADMIN_PASSWORD`, storage URL
templates). Secrets are passed as `EnvVar`s, so their values never land in run config or the UI."""

from __future__ import annotations

import os
from typing import Any, overload

from dagster import Definitions, EnvVar, mem_io_manager

from acpipeline.dagster_compat import run_executor
from acpipeline.operations import new_content_sensor, reconcile_schedule, sync_job, wipe_job
from acpipeline.resources.mongo import MongoResource
from acpipeline.resources.pds import PdsResource
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import (
    DEFAULT_BLOBS_URL,
    DEFAULT_DATABASE,
    DEFAULT_GUEST_IMAGE_URL,
    DEFAULT_IMAGE_URL,
    DEFAULT_ZIP_URL,
)
from acpipeline.sync.assets import atproto_records, media_blobs, source_items


@overload
def _env(name: str) -> str | None: ...
@overload
def _env(name: str, default: str) -> str: ...
def _env(name: str, default: str | None = None) -> str | None:
    """An EnvVar when the variable is set (resolved at run time, never stored), else the default."""
    return EnvVar(name) if os.environ.get(name) else default


def build_resources() -> dict[str, Any]:
    """The resources as the environment configures them now; secrets stay EnvVars, resolved only in the
    run."""
    return {
        "mongo": MongoResource(
            connection_string=_env("MONGODB_CONNECTION_STRING"),
            database=_env("MONGODB_NAME", DEFAULT_DATABASE),
        ),
        "pds": PdsResource(url=_env("PDS_URL"), admin_password=_env("PDS_ADMIN_PASSWORD")),
        "storage": StorageResource(
            image_url=_env("ACPIPELINE_IMAGE_URL", DEFAULT_IMAGE_URL),
            guest_image_url=_env("ACPIPELINE_GUEST_IMAGE_URL", DEFAULT_GUEST_IMAGE_URL),
            zip_url=_env("ACPIPELINE_ZIP_URL", DEFAULT_ZIP_URL),
            blobs_url=_env("ACPIPELINE_BLOBS_URL", DEFAULT_BLOBS_URL),
        ),
        # The items and blobs pass from stage to stage inside the run (one process): kept in memory, not
        # pickled under DAGSTER_HOME, where copies of every user's content would pile up and a re-executed
        # record stage would plan from items hours old. A partition is re-run whole.
        "io_manager": mem_io_manager,
    }


def build_definitions() -> Definitions:
    """Built from the environment as it is now (the CLI sets the demo's URLs before calling this)."""
    return Definitions(
        assets=[source_items, media_blobs, atproto_records],
        jobs=[sync_job, wipe_job],
        sensors=[new_content_sensor],
        schedules=[reconcile_schedule],
        resources=build_resources(),
        # The three stages of a partition (and a wipe) run in one process: no per-step process start-up.
        executor=run_executor,
    )


defs = build_definitions()
