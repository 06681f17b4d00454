"""The platform benchmark runs end to end on the small dataset: its own PDS, the Dagster services (the
production layout's three processes, or `dagster dev`), two backfills launched through GraphQL. Timing is
not asserted; what must hold at any size is: every key written, the records on the PDS, no write in the
no-op pass, a run per many partitions, every request counted per method at the proxies, one planned
event per asset and run with nothing exported to the services, and no process left behind.

Two runs, their parameters combined: here the production layout with the PDS's rate limits on (no key for
the pipeline); `test_bench_platform_dev.py` (a file of its own, so the two run on separate workers) has
`dagster dev` over a 20 ms network with the limits on and the bypass key given."""

import json

import psutil

from acpipeline.bench.backfill_pass import SYNC_ASSETS
from acpipeline.bench.counting_proxy import WRITE_METHODS
from acpipeline.bench.platform import KEYS, run_platform_bench
from acpipeline.bench.platform_table import format_platform_table
from acpipeline.bench.processes import MARKER
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.settings import DAGSTER_ENV

APPLY_WRITES = "com.atproto.repo.applyWrites"
UPLOAD_BLOB = "com.atproto.repo.uploadBlob"


def _bench_processes(result: dict) -> list[psutil.Process]:
    """This run's processes still alive; not another bench's on another worker (CI saw one once)."""
    token = result["process_marker"][MARKER]
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == token:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _run(tmp_path, **options) -> tuple[dict, list[str]]:
    out = tmp_path / "platform.json"
    lines: list[str] = []
    result = run_platform_bench(str(out), size="small", log=lines.append, **options)
    assert json.loads(out.read_text()) == result
    return result, lines


def _check_passes(result: dict, lines: list[str]) -> None:
    """What every run must show, whatever its layout, network and limits."""
    assert set(KEYS) <= set(result)
    assert result["platform_records"] == result["platform_records_expected"] > 0
    assert result["platform_partitions"] == result["dataset"]["accounts"] * len(MEDIA_NAMES)
    assert result["platform_noop_writes"] == 0
    assert result["platform_full_writes"], "the full pass wrote nothing through the counting proxy"
    for label in ("full", "noop"):
        runs = result[f"platform_{label}_runs"]
        assert 0 < runs * 4 <= result["platform_partitions"], (label, runs)
        details = result["passes"][label]
        assert details["statuses"] == {"SUCCESS": runs}
        assert details["partitions_in_runs"] == result["platform_partitions"]
    for name in ("full_s", "noop_s", "ceiling_s", "derive_s", "peak_rss_mb"):
        assert result[f"platform_{name}"] > 0, name
    # the memory sampler saw the webserver, the daemon, their code server and runs
    assert result["passes"]["full"]["peak_processes"] >= 5
    assert {"webserver", "daemon", "code servers", "runs"} <= set(
        result["passes"]["full"]["peak_breakdown_mb"]
    )
    assert result["passes"]["full"]["cpu_s"]["runs"] > 0
    assert result["platform_derive_items"] > 0  # the blob stage alone derived the paintings and tapes again
    timeline = result["passes"]["full"]["timeline"]
    assert len(timeline) == result["platform_full_runs"]
    assert {run["media"] for run in timeline} <= set(MEDIA_NAMES)

    # Nothing exported to the services, and still the fast path: one planned event per asset and run (the
    # small dataset's runs cover several partitions each, so without it a run has several per asset).
    assert result["dagster_env"] == dict.fromkeys(DAGSTER_ENV)
    for label in ("full", "noop"):
        planned = result["platform_planned_events_per_run"][label]
        assert planned["runs"] == result[f"platform_{label}_runs"], label
        assert planned["min"] == planned["max"] == len(SYNC_ASSETS), (label, planned)

    # Every request counted per method at the proxies: the full pass's uploads and commits, the paintings'
    # images fetched through the storage proxy; no write at all in the no-op pass.
    full, noop = result["platform_requests"]["full"], result["platform_requests"]["noop"]
    assert full["pds"].get(APPLY_WRITES, 0) >= 1 and full["pds"].get(UPLOAD_BLOB, 0) >= 1, full["pds"]
    written = sum(n for method, n in full["pds"].items() if method in WRITE_METHODS)
    assert written == sum(result["platform_full_writes"].values())
    assert full["storage"].get("storage:GET .png", 0) >= 1, full["storage"]
    assert full["pds_total"] == sum(full["pds"].values()) and full["total"] == full["pds_total"] + sum(
        full["storage"].values()
    )
    assert not any(method in WRITE_METHODS for method in noop["pds"]), noop["pds"]
    assert noop["pds_total"] > 0  # the no-op pass still asks the PDS (its proofs), and was counted
    assert result["platform_requests_per_record"] == round(full["pds_total"] / result["platform_records"], 3)
    for label in ("full", "noop"):
        details = result["passes"][label]
        assert details["requests_outside_passes"] == 0  # the seeding and the reading go around the proxies
        assert details["floor_s"] == round(details["requests"]["pds_globally_limited"] / 10, 1)
        assert details["deferred_partitions"] == 0  # the small dataset stays under every limit
        assert 0 < details["run_start_s_p50"] <= details["run_start_s_p90"], label
        celery = result["launcher"] == "celery"
        assert details["runs_in_celery_workers"] == (details["runs"] if celery else 0), label
        assert details["load_before"] >= 0 and len(details["loadavg_after"]) == 3

    table = format_platform_table(result)
    for key in ("records", "partitions", "full_s", "noop_s", "noop_writes", "ceiling_s", "peak_rss_mb"):
        assert f"`platform_{key}`" in table, key
    for key in ("requests", "requests_per_record", "planned_events_per_run", "floor_s"):
        assert f"`platform_{key}`" in table, key
    assert "runs per pass" in table
    assert any(line.startswith("seeding the small dataset") for line in lines)
    for label in ("full", "no-op"):
        assert any(line.startswith(f"{label} pass: COMPLETED_SUCCESS") and " runs " in line for line in lines)
    assert not _bench_processes(result), "the bench left its Dagster processes running"


def test_platform_bench_in_the_production_layout_with_the_pds_limits_on(tmp_path):
    result, lines = _run(tmp_path, pds_limits="on")
    _check_passes(result, lines)
    assert result["layout"] == "production" and result["rtt_ms"] == 0
    assert {"webserver", "daemon", "code servers"} <= set(result["passes"]["noop"]["peak_breakdown_mb"])
    # the PDS applied its limits; the seeding got past them with the key, the pipeline had none
    assert result["pds_limits"] == "on" and result["pds_limits_probe"]["limited"]
    assert result["pds_limits_probe"]["bypassed"] and result["seeding_used_bypass_key"]
    assert "ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY" not in result["dagster_env"]
    assert result["passes"]["full"]["pds_limit_after"]["remaining"] < 3000
