"""The platform benchmark runs end to end on the small dataset: its own PDS, the webserver and the daemon as
separate processes, two backfills launched through GraphQL. Timing is not asserted; what must hold at any
size is: every key written, the records on the PDS, no write in the no-op pass, a run per many partitions,
and no process left behind."""

import json

import psutil

from acpipeline.bench.platform import KEYS, MARKER, format_platform_table, run_platform_bench
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.settings import DAGSTER_ENV


def _bench_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if MARKER in process.environ():
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_platform_bench_on_the_small_dataset(tmp_path):
    out = tmp_path / "platform.json"
    lines: list[str] = []
    result = run_platform_bench(str(out), size="small", log=lines.append)

    written = json.loads(out.read_text())
    assert written == result
    assert set(KEYS) <= set(result)
    assert result["platform_records"] == result["platform_records_expected"] > 0
    assert result["platform_partitions"] == result["dataset"]["accounts"] * len(MEDIA_NAMES)
    assert result["platform_noop_writes"] == 0
    assert set(DAGSTER_ENV) <= set(result["dagster_env"])  # the servers ran with the deployment's settings
    assert result["platform_full_writes"], "the full pass wrote nothing through the counting proxy"
    for label in ("full", "noop"):
        runs = result[f"platform_{label}_runs"]
        assert 0 < runs * 4 <= result["platform_partitions"], (label, runs)
        details = result["passes"][label]
        assert details["statuses"] == {"SUCCESS": runs}
        assert details["partitions_in_runs"] == result["platform_partitions"]
    for name in ("full_s", "noop_s", "ceiling_s", "derive_s", "peak_rss_mb"):
        assert result[f"platform_{name}"] > 0, name
    # the memory sampler saw the webserver, the daemon, their code servers and runs
    assert result["passes"]["full"]["peak_processes"] >= 5
    assert {"webserver", "daemon", "code servers", "runs"} <= set(
        result["passes"]["full"]["peak_breakdown_mb"]
    )
    assert result["passes"]["full"]["cpu_s"]["runs"] > 0
    assert result["platform_derive_items"] > 0  # the blob stage alone derived the paintings and tapes again
    timeline = result["passes"]["full"]["timeline"]
    assert len(timeline) == result["platform_full_runs"]
    assert {run["media"] for run in timeline} <= set(MEDIA_NAMES)

    table = format_platform_table(result)
    for key in ("records", "partitions", "full_s", "noop_s", "noop_writes", "ceiling_s", "peak_rss_mb"):
        assert f"`platform_{key}`" in table, key
    assert "runs per pass" in table
    assert any(line.startswith("seeding the small dataset") for line in lines)
    for label in ("full", "no-op"):
        assert any(line.startswith(f"{label} pass: COMPLETED_SUCCESS") and " runs " in line for line in lines)
    assert not _bench_processes(), "the bench left its Dagster processes running"
