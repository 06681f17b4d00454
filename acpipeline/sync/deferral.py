"""Partitions a run left for after the PDS's rate-limit window: the record stage writes them down, the
new-content sensor finds them (from any run: its own, the schedule's, a backfill's, the CLI's) and requests
them again once their time has come."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from dagster import DagsterInstance

from acpipeline.dagster_compat import kv_get, kv_set

DEFERRED_TAG = "acpipeline/deferred"  # "true" on a run that left partitions for after a rate-limit reset
DEFERRED_UNTIL_TAG = "acpipeline/deferred_until"
DEFERRED_KEY = "acpipeline/deferred/"  # + run id: the run's deferred partitions, in Dagster's key-value store


def record_deferred(instance: DagsterInstance, run_id: str, deferred: dict[str, float]) -> None:
    """The partitions the run left for after the PDS's rate-limit window, where the sensor finds them: the
    map in the key-value store under the run's id, and tags on the run (the sensor's one query, the UI)."""
    kv_set(instance, {DEFERRED_KEY + run_id: json.dumps(deferred, sort_keys=True)})
    latest = datetime.fromtimestamp(max(deferred.values()), UTC).isoformat(timespec="seconds")
    instance.add_run_tags(run_id, {DEFERRED_TAG: "true", DEFERRED_UNTIL_TAG: latest})


def deferred_of_runs(instance: DagsterInstance, run_ids: list[str]) -> dict[str, float]:
    """The partitions those runs deferred, each with the latest time it must wait for."""
    stored = kv_get(instance, {DEFERRED_KEY + run_id for run_id in run_ids})
    out: dict[str, float] = {}
    for value in stored.values():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for key, until in json.loads(value).items():
                out[key] = max(out.get(key, 0.0), float(until))
    return out
