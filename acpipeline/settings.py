"""Settings read from the environment, with the platform's own variable names where it has them."""

from __future__ import annotations

import os
from pathlib import Path

from acpipeline.errors import OperatorError

DEFAULT_DATABASE = "aesthetic"
ART_HANDLE = "art.at.aesthetic.computer"
ART_GUEST_ID = "art-guest"

# Production storage layout (DigitalOcean Spaces); placeholders {bucket}, {user}, {user_dir}, {slug}.
DEFAULT_IMAGE_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{user}/painting/{slug}.png"
DEFAULT_GUEST_IMAGE_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{slug}.png"
DEFAULT_ZIP_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{user_dir}{slug}.zip"
# The bucket the platform's oven uploads baked tapes to (`tapes/{code}.mp4`, `tapes/{code}-thumb.jpg`).
DEFAULT_BLOBS_URL = "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/{key}"


def home_path() -> Path:
    """`ACPIPELINE_HOME`, default `./.acpipeline`, whether or not it exists yet."""
    return Path(os.environ.get("ACPIPELINE_HOME") or ".acpipeline").resolve()


def acpipeline_home() -> Path:
    """Embedded data and caches: `home_path()`, made if missing."""
    home = home_path()
    home.mkdir(parents=True, exist_ok=True)
    return home


# Settings Dagster reads from the environment of the process that creates runs (the daemon for backfills,
# the sensor and the schedule; the webserver for a click; the CLI): `DAGSTER_EMIT_PARTITION_SUBSET_IN_
# PLANNED_EVENTS` makes a run over a range record one "planned" event per asset instead of one per partition
# (750 for a run of 250 partitions, about 15,000 per pass over the platform, all written by the daemon one
# after the other before the runs start). Dagster's caveat: the status of a range run's partition that did
# not materialize then stays as it was instead of turning "failed"; the record stage therefore records a
# failed check for every partition it could not sync, and backfills still count those partitions failed.
# `DAGSTER_EVENT_BATCH_SIZE` has a run hand a range output's materializations (one per partition) to the
# event log in batches of that size, which `acpipeline.event_log` writes in one transaction each.
DAGSTER_ENV = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true", "DAGSTER_EVENT_BATCH_SIZE": "500"}


def apply_dagster_env() -> None:
    """`DAGSTER_ENV` in this process's environment (and so in the servers and runs it starts), unless the
    operator set those variables otherwise. Dagster reads them with `os.getenv` when it creates a run (the
    planned events: in the daemon, the webserver or the CLI) and as a run stores its events (the batch
    size: in the run), so every one of those processes calls this as it opens the instance, none relying
    on an export: the project's SQLite event log (`acpipeline.event_log`, `dagster.yaml`) and PostgreSQL
    storage (`acpipeline.postgres_storage`, `deploy/dagster.yaml`) when Dagster builds them from the
    instance's configuration, and the `acpipeline` CLI (`acpipeline.cli.main`)."""
    for name, value in DAGSTER_ENV.items():
        os.environ.setdefault(name, value)


# Connections the PDS client keeps open between requests (`resources/pds/transport.py`); it opens up to twice
# as many, but past these each request would open (and close) one of its own.
PDS_KEPT_CONNECTIONS = 16


def network_concurrency() -> int:
    """Requests a run keeps in flight to storage (paintings' fetches and recording checks), and half the
    small blob uploads it keeps in flight to the PDS (`upload_concurrency`): `ACPIPELINE_NETWORK_CONCURRENCY`,
    default 8, at most 32 (the PDS client's connections). Raise it where storage is far away; each fetch
    holds a painting in memory (the README's benchmark has what 32 did to the time and the peak memory)."""
    value = os.environ.get("ACPIPELINE_NETWORK_CONCURRENCY") or "8"
    try:
        return max(1, min(32, int(value)))
    except ValueError:
        raise OperatorError(
            f"ACPIPELINE_NETWORK_CONCURRENCY={value!r} is not a number: set it to 1-32"
        ) from None


def upload_concurrency() -> int:
    """Small blob uploads (thumbnails) a run keeps in flight to the PDS: twice `network_concurrency()`, at
    most `PDS_KEPT_CONNECTIONS`. An upload waits on the PDS's round trip and its work, not on memory (the
    bytes in flight are bounded apart), so more of them pay where the PDS is far away (see the README's
    benchmark); past the kept connections each would pay for a new connection instead."""
    return min(PDS_KEPT_CONNECTIONS, 2 * network_concurrency())
