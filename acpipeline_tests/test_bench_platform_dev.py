"""The platform benchmark as `make dev` runs Dagster (`dagster dev`), over a 20 ms network, with the PDS's
rate limits on and the bypass key given to the pipeline; what every run must show is in
`test_bench_platform.py`."""

from .test_bench_platform import _check_passes, _run


def test_platform_bench_in_dagster_dev_over_a_network_with_the_bypass_key(tmp_path):
    result, lines = _run(tmp_path, layout="dev", rtt_ms=20, pds_limits="bypass")
    _check_passes(result, lines)
    assert result["layout"] == "dev" and result["rtt_ms"] == 20 and result["pds_limits"] == "bypass"
    assert any(line.startswith("starting dagster dev") for line in lines)
    # `dagster dev` and what it started: its own webserver, daemon and code server, all sampled
    assert "dagster dev" in result["passes"]["full"]["peak_breakdown_mb"]
    assert result["pds_limits_probe"]["limited"] and result["pds_limits_probe"]["bypassed"]
    # the pipeline's requests carried the key: of the PDS's global window, only the bench's probes were spent
    for label in ("full", "noop"):
        assert result["passes"][label]["pds_limit_after"]["remaining"] >= 3000 - 3, label
    # the network was there: every PDS and storage request of the full pass waited at least a round trip
    for side in ("pds", "storage"):
        for method, row in result["passes"]["full"]["requests"][side].items():
            assert row["s"] >= row["n"] * 0.02, (side, method, row)
