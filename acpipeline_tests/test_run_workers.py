"""The Celery workers' app (acpipeline/run_workers/worker.py) as `celery -A` loads it, without a broker: a
pool process (forked from the worker, as Celery's prefork pool makes them) starts with the code location
already imported (the pool-wait fix comes with each run's executor, see test_dagster_compat); an instance
without the Celery launcher gets one plain line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

# In the worker's main process, then in a child forked from it: what a run there finds already loaded.
PROBE = textwrap.dedent(
    """
    import os, sys
    import acpipeline.run_workers.worker as worker
    pid = os.fork()
    if pid == 0:
        from celery.signals import task_postrun
        found = {
            "code location": "acpipeline.definitions" in sys.modules,
            "run task": "execute_job" in worker.app.tasks,
            "broker": worker.app.conf.broker_url == os.environ["ACPIPELINE_CELERY_BROKER_URL"],
            "memory given back": worker.MALLOC_TRIM is not None and bool(task_postrun.receivers),
        }
        print(sorted(name for name, ok in found.items() if not ok), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    """
)


def _home(tmp_path: Path, celery: bool) -> Path:
    home = tmp_path / ("celery" if celery else "default")
    home.mkdir()
    text = (PROJECT / "dagster.yaml").read_text()
    if celery:
        text += "\n" + (PROJECT / "deploy" / "celery" / "run_launcher.yaml").read_text()
    (home / "dagster.yaml").write_text(text)
    return home


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "ACPIPELINE_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    return subprocess.run(
        args, cwd=PROJECT, env={**base, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_pool_process_starts_with_the_code_location_loaded(tmp_path):
    home = _home(tmp_path, celery=True)
    broker = "redis://127.0.0.1:1/0"  # never connected to here
    done = _run(
        [sys.executable, "-c", PROBE], tmp_path, DAGSTER_HOME=str(home), ACPIPELINE_CELERY_BROKER_URL=broker
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout  # nothing missing


def test_a_worker_without_the_celery_launcher_or_its_broker_says_so_in_one_line(tmp_path):
    celery = [str(Path(sys.executable).parent / "celery"), "-A", "acpipeline.run_workers.worker", "worker"]
    default = _run(celery, tmp_path, DAGSTER_HOME=str(_home(tmp_path, celery=False)))
    unset = _run(celery, tmp_path, DAGSTER_HOME=str(_home(tmp_path, celery=True)))  # no broker URL
    for done, says in (
        (default, "runs runs with DefaultRunLauncher; a Celery worker needs the run_launcher"),
        (unset, "ACPIPELINE_CELERY_BROKER_URL is not set"),
    ):
        assert done.returncode != 0
        output = (done.stdout + done.stderr).strip()
        assert output.startswith("acpipeline worker: ") and says in output, output
        assert len(output.splitlines()) == 1 and "Traceback" not in output, output
