"""The benchmark runs end to end and writes every key (on the small dataset; timing is not asserted)."""

import json

from acpipeline.bench.run import KEYS, run_bench


def test_bench_runs_and_writes_its_keys(pds_url, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(str(out), size="small", log=lambda *_: None)
    written = json.loads(out.read_text())
    assert set(KEYS) <= set(written)
    assert written == result
    assert written["records"] > 0 and written["noop_writes"] == 0
    assert all(written[k] > 0 for k in ("full_sync_s", "ceiling_s", "seed_strategy_s", "peak_rss_mb"))
    # Each sync's peak is the sum of its processes' shares (the python process of the sync is one of them),
    # and the overall peak is the largest of them; the full sync's CPU is counted for the sync and the PDS.
    for shares in written["peak_rss_mb_by_sync"].values():
        assert shares["seconds"] >= 0
        assert any(name.split(" ", 1)[1].startswith("python") for name in shares if name != "seconds")
    peaks = [sum(v for k, v in s.items() if k != "seconds") for s in written["peak_rss_mb_by_sync"].values()]
    assert abs(max(peaks) - written["peak_rss_mb"]) < 1.0
    assert written["cpu_s"]["full_sync"]["syncs"] > 0 and written["cpu_s"]["full_sync"]["pds"] > 0
