"""The platform benchmark with `launcher="celery"` (`--launcher celery`) on the small dataset: the production
layout's three processes, a throwaway Redis, and deploy/celery/Procfile's worker running every run. What
every bench run must show holds (test_bench_platform._check_passes); here the runs' CPU is the worker's:
no run is a process the code server started."""

from .test_bench_platform import _check_passes, _run


def test_platform_bench_with_the_celery_launcher(tmp_path):
    result, lines = _run(tmp_path, launcher="celery")
    _check_passes(result, lines)
    assert result["layout"] == "production" and result["launcher"] == "celery"
    assert any("and a Celery worker (production layout, celery run launcher)" in line for line in lines)
    for label in ("full", "noop"):
        details = result["passes"][label]
        assert details["runs_in_celery_workers"] == details["runs"] > 0, label  # every run through Redis
        assert 0 < details["run_start_s_p50"] <= details["run_start_s_p90"], label
