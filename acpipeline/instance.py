"""The Dagster instance the CLI records its runs in: `$DAGSTER_HOME` (default `./.dagster_home`), set up
from the project's `dagster.yaml` on first use, so `make dev` (which sets the same default) shows the same
history. A plain `dagster dev` without `DAGSTER_HOME` runs on a temporary instance of Dagster's instead."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from dagster import DagsterInstance

from acpipeline.settings import apply_dagster_env

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME made absolute, created and exported; the project's dagster.yaml is copied in only if it
    has none."""
    apply_dagster_env()
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    target = home / "dagster.yaml"
    if not target.exists() and PROJECT_DAGSTER_YAML.exists():
        shutil.copy(PROJECT_DAGSTER_YAML, target)
    return home


def get_instance() -> DagsterInstance:
    """The command line's instance: its home set up (`ensure_dagster_home`), then opened under the home's
    lock."""
    return open_instance(ensure_dagster_home())


def open_instance(home: Path | None = None) -> DagsterInstance:
    """`DagsterInstance.get()` under a lock in DAGSTER_HOME: on a new home Dagster's SQLite storages create
    their tables as the instance opens them, and two processes doing that at once (two syncs started
    together) fail with "table ... already exists"."""
    home = home or Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".acpipeline-open.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return DagsterInstance.get()  # opens (and on a new home creates) the run, event and schedule storage
