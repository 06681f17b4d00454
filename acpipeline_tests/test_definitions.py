"""The code location's shape, snapshotted (as dagster-open-platform does): the asset graph, partitions,
backfill policies, pools, checks, jobs, sensors and schedules. A change to any of them fails here until the
snapshot is regenerated on purpose:
`ACPIPELINE_UPDATE_SNAPSHOT=1 pytest acpipeline_tests/test_definitions.py`."""

import json
import os
from pathlib import Path
from typing import Any

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition, PartitionsDefinition

from acpipeline.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "data" / "definitions_snapshot.json"


def _dimension(partitions: PartitionsDefinition) -> str:
    if isinstance(partitions, DynamicPartitionsDefinition):
        return f"dynamic: {partitions.name}"
    return f"static: {', '.join(partitions.get_partition_keys())}"


def shape() -> dict[str, Any]:
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assert isinstance(partitions, MultiPartitionsDefinition)
        assets[key.to_user_string()] = {
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "group": node.group_name,
            "partitions": {d.name: _dimension(d.partitions_def) for d in partitions.partitions_defs},
            "backfill_policy": str(node.backfill_policy),
            "pools": sorted(node.pools) if node.pools else [],
            "checks": sorted(check.name for check in node.check_keys),
        }
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in defs.jobs),
        "sensors": {
            s.name: {"interval_s": s.minimum_interval_seconds, "default": str(s.default_status)}
            for s in defs.sensors
        },
        "schedules": {
            s.name: {
                "cron": s.cron_schedule,
                "timezone": s.execution_timezone,
                "default": str(s.default_status),
            }
            for s in defs.schedules
        },
        "resources": sorted(defs.resources),
    }


def test_the_code_location_keeps_its_shape(monkeypatch):
    # the shape as shipped: not the demo's or a test's environment
    for name in ("ACPIPELINE_AUTOMATION", "ACPIPELINE_SYNC_CRON", "ACPIPELINE_SYNC_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    current = shape()
    if os.environ.get("ACPIPELINE_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())
