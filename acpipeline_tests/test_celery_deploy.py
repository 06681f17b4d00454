"""The Celery layout (deploy/celery/) run for real: deploy/Procfile's code server, webserver and daemon on a
real PostgreSQL (deploy/dagster.yaml with deploy/celery/run_launcher.yaml appended, as the README says),
a real Redis with deploy/celery/redis.conf, and deploy/celery/Procfile's worker started twice, standing
for two machines (each its own ACPIPELINE_HOME, sharing MongoDB, sessions and marks through
`ACPIPELINE_SHARED_STATE=mongodb` and the derived cache as deploy/acpipeline.env has it).

- A UI-style backfill runs every run inside the workers' long-lived processes, and the sensor brings new
  content through them.
- Faults: runs launched while no worker is up wait in Redis, and survive Redis killed and restarted; a
  worker killed with SIGKILL in the middle of a run's writes fails that run in Dagster, which retries it on
  the other machine, with nothing lost and nothing duplicated.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from acpipeline.bench.backfill_pass import LAUNCH
from acpipeline.bench.dagster_runs import _run_failures
from acpipeline.bench.processes import _start
from acpipeline.bench.redis import RedisServer, start_redis
from acpipeline.bench.servers import _wait_for_worker, procfile
from acpipeline.core.media import MEDIA
from acpipeline.settings import DAGSTER_ENV
from acpipeline.sync.partitions import partition_key, register_handles

from .faultproxy import FaultProxy, Seen
from .helpers import add_moods, add_pieces, add_user, records
from .postgres import PgCluster
from .test_deploy import (
    DB_PASSWORD,
    DEPLOY,
    SYNC_ASSETS,
    Deployment,
    _backfill,
    _check_statuses,
    _wait,
    deployed_environment,
)
from .test_reliability import APPLY
from .test_ui import SENSOR, START_SENSOR

CELERY = DEPLOY / "celery"
MACHINES = ("a", "b")
TASK_ID_TAG = DAGSTER_CELERY_TASK_ID_TAG
ASSETS = [{"path": [name]} for name in SYNC_ASSETS]
STARTED_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


class CeleryDeployment(Deployment):
    """deploy/Procfile's three services and deploy/celery/Procfile's worker on each machine."""

    def __init__(self, work: Path, env: dict[str, str], mongo: Path, proxy: FaultProxy):
        super().__init__(work, env)
        self.proxy = proxy
        (worker,) = procfile(CELERY / "Procfile").values()
        bin_dir = Path(self.commands["web"][0]).parent
        for machine in MACHINES:
            home = work / f"machine-{machine}"
            home.mkdir()
            (home / "mongo").symlink_to(mongo)  # the one MongoDB (the embedded store's files)
            command = [str(bin_dir / worker[0])] + [
                f"runs-{machine}@%h" if arg == "runs@%h" else arg for arg in worker[1:]
            ]
            assert command != [str(bin_dir / worker[0]), *worker[1:]], "the Procfile's node name moved"
            self.commands[f"worker-{machine}"] = command
            self.logs[f"worker-{machine}"] = work / f"worker-{machine}.log"
        self.homes = {machine: work / f"machine-{machine}" for machine in MACHINES}

    def daemon_log(self) -> str:
        return self.logs["daemon"].read_text(errors="replace")[-3000:]

    def start_worker(self, machine: str) -> None:
        name = f"worker-{machine}"
        env = {**self.env, "ACPIPELINE_HOME": str(self.homes[machine])}
        self.processes[name] = _start(self.commands[name], env, self.logs[name])
        _wait_for_worker(self.processes[name], self.logs[name], timeout_s=120)

    def pool_pids(self, machine: str) -> set[int]:
        """The worker's pool processes: the ones that run runs."""
        process = psutil.Process(self.processes[f"worker-{machine}"].pid)
        return {child.pid for child in process.children(recursive=True)}

    def close(self) -> None:
        for machine in MACHINES:
            if f"worker-{machine}" in self.processes:
                self.stop(f"worker-{machine}")
        super().close()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def celery_deployment(world, postgres: PgCluster, redis: RedisServer, tmp_path, monkeypatch):
    owner = f"acpipeline_{secrets.token_hex(3)}"  # each test its own role and database in the one cluster
    db_name = postgres.create_database(f"celery_{secrets.token_hex(3)}", owner=owner, password=DB_PASSWORD)
    monkeypatch.setenv("DAGSTER_PG_URL", postgres.url(db_name, owner, DB_PASSWORD))
    monkeypatch.setenv("ACPIPELINE_CELERY_BROKER_URL", redis.url)
    monkeypatch.setenv("ACPIPELINE_AUTOMATION", "stopped")
    proxy = FaultProxy(world.pds_url).start()  # the services' PDS: a test can hold a write there
    monkeypatch.setenv("PDS_URL", proxy.url)
    for name, value in deployed_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    # The README's step: the instance file is deploy/dagster.yaml with the Celery run launcher appended.
    (home / "dagster.yaml").write_text(
        (DEPLOY / "dagster.yaml").read_text() + "\n" + (CELERY / "run_launcher.yaml").read_text()
    )
    deployment = CeleryDeployment(
        tmp_path, {k: v for k, v in os.environ.items() if k not in DAGSTER_ENV}, world.home / "mongo", proxy
    )
    try:
        yield deployment
    finally:
        deployment.close()
        proxy.stop()


def _start_services(deployment: CeleryDeployment, instance: DagsterInstance, workers: bool = True) -> None:
    deployment.start_services(instance)
    if workers:
        for machine in MACHINES:
            deployment.start_worker(machine)


def _run_pid(instance: DagsterInstance, run_id: str) -> int:
    for event in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = STARTED_PID.search(event.message or "")
        if found:
            return int(found.group(1))
    raise AssertionError(f"run {run_id} logged no process")


def _seed(world, db, name: str, users: int, moods: int) -> list[tuple[str, str, str]]:
    made = [add_user(world, db, f"{name}{n}") for n in range(users)]
    for n, (sub, _, _) in enumerate(made):
        add_moods(db, sub, [f"{name} mood {i} of user {n}" for i in range(moods)])
    return made


def _assert_mirrored(world, users: list[tuple[str, str, str]], moods: int) -> None:
    for _, handle, did in users:
        found = records(world, did, MEDIA["mood"].nsid)
        refs = [r["value"]["ref"] for r in found]
        assert len(refs) == len(set(refs)) == moods, (handle, sorted(refs))  # none lost, none twice


def test_backfill_and_sensor_run_in_warm_workers_on_two_machines(world, celery_deployment):
    deployment = celery_deployment
    db = world.db()
    users = _seed(world, db, "celery", users=6, moods=2)
    add_pieces(db, users[0][0], ["celerypiece"])
    keys = [partition_key(h, m) for m in ("mood", "piece") for _, h, _ in users]
    with DagsterInstance.get() as instance:
        register_handles(instance, db)
        _start_services(deployment, instance)
        pools = {machine: deployment.pool_pids(machine) for machine in MACHINES}
        assert all(len(p) == 2 for p in pools.values()), pools  # --concurrency 2 each

        # A backfill as the UI launches it: every run inside a worker's pool process, none in a new one.
        backfill_id = _backfill(deployment, instance, keys)
        _assert_mirrored(world, users, moods=2)
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
        pids = {run.run_id: _run_pid(instance, run.run_id) for run in runs}
        everywhere = set().union(*pools.values())
        assert set(pids.values()) <= everywhere, (pids, pools)  # processes that were up before any run
        assert all(TASK_ID_TAG in run.tags for run in runs)
        for key in keys:
            assert _check_statuses(instance, key)[0] == "SUCCEEDED", key

        # The sensor, through the same workers: a mood written now reaches the PDS.
        selector = {**SENSOR, "repositoryLocationName": "acpipeline"}
        started = deployment.graphql(START_SENSOR, {"selector": selector})["startSensor"]
        assert started["__typename"] == "Sensor", started
        time.sleep(20)  # its first tick takes the baseline
        sub, handle, did = users[1]
        mood = str(add_moods(db, sub, ["written while the workers wait"])[0])
        written = time.monotonic()

        def arrived() -> bool:
            return any(r["value"]["ref"] == mood for r in records(world, did, MEDIA["mood"].nsid))

        _wait("the new mood", arrived, 300, deployment.daemon_log)
        print(
            f"\nFIGURES celery: new mood on the PDS {time.monotonic() - written:.0f} s after it was written"
        )
        sensor_runs = instance.get_runs(filters=RunsFilter(tags={"acpipeline/trigger": "sensor"}))
        assert sensor_runs and {_run_pid(instance, r.run_id) for r in sensor_runs} <= everywhere


def test_queued_runs_survive_a_redis_crash_and_a_killed_worker_loses_nothing(world, celery_deployment, redis):
    deployment = celery_deployment
    db = world.db()
    users = _seed(world, db, "queued", users=4, moods=3)
    keys = [partition_key(h, "mood") for _, h, _ in users]
    with DagsterInstance.get() as instance:
        register_handles(instance, db)
        _start_services(deployment, instance, workers=False)

        # No worker yet: the launched runs wait in Redis. Redis crashes and comes back; they still run.
        params = {"assetSelection": ASSETS, "partitionNames": keys, "title": "queued"}
        launched = deployment.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def waiting() -> list:
            runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))
            return [r for r in runs if TASK_ID_TAG in r.tags and r.status == DagsterRunStatus.STARTING]

        queued = _wait("runs waiting in Redis", waiting, 180, deployment.daemon_log)
        redis.restart()
        for machine in MACHINES:
            deployment.start_worker(machine)
        for run in queued:
            _wait(
                f"run {run.run_id}",
                lambda run=run: instance.get_run_by_id(run.run_id).is_finished,
                300,
                deployment.daemon_log,
            )
            status = instance.get_run_by_id(run.run_id).status
            assert status == DagsterRunStatus.SUCCESS, _run_failures(instance, [run.run_id])
        _assert_mirrored(world, users, moods=3)

        # A worker dies whole (SIGKILL to its process group, as its machine would) while its run's first
        # write is held at the PDS's door. The write then goes through, unanswered.
        sub, handle, did = users[0]
        add_moods(db, sub, [f"late mood {i}" for i in range(3)])
        proxy = deployment.proxy
        held, release = threading.Event(), threading.Event()

        def hold(seen: Seen) -> str | None:
            if (
                seen.nsid == APPLY
                and seen.phase == "before"
                and did.encode() in seen.body
                and not held.is_set()
            ):
                held.set()
                release.wait(120)
            return None

        proxy.hooks.append(hold)
        key = partition_key(handle, "mood")
        params = {"assetSelection": ASSETS, "partitionNames": [key], "title": "killed"}
        launched = deployment.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        assert held.wait(180), deployment.logs["daemon"].read_text()[-3000:]
        (run,) = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))
        pid = _run_pid(instance, run.run_id)
        (machine,) = [m for m in MACHINES if pid in deployment.pool_pids(m)]
        os.killpg(deployment.processes[f"worker-{machine}"].pid, signal.SIGKILL)
        release.set()

        def retried() -> list:
            runs = instance.get_runs(filters=RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
            return [r for r in runs if r.is_finished]

        (retry,) = _wait("the retry of the killed run", retried, 400, deployment.daemon_log)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert retry.status == DagsterRunStatus.SUCCESS, _run_failures(instance, [retry.run_id])
        other = next(m for m in MACHINES if m != machine)
        assert _run_pid(instance, retry.run_id) in deployment.pool_pids(other)
        found = [r["value"]["ref"] for r in records(world, did, MEDIA["mood"].nsid)]
        assert len(found) == len(set(found)) == 6, sorted(found)
        assert _check_statuses(instance, key)[0] == "SUCCEEDED"
