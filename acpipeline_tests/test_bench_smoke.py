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
