"""The production deployment as `deploy/` describes it, run for real: the instance on a real PostgreSQL
server (`deploy/dagster.yaml`, unchanged), and the code server, the webserver and the daemon as separate
processes started from `deploy/Procfile`'s commands with only their ports and the workspace path
substituted (`deploy/workspace.yaml`, its port substituted).

One test walks an operator's day: a backfill through GraphQL, each partition's own history and check in
the instance, a wipe launched through GraphQL, a code server restarted (a deploy), the schedule's tick and
the runs it starts (which restore the wiped account), and at the end a scan of every table of the database
for account passwords and session tokens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.storage.event_log.base import PartitionKeyFilter
from psycopg2 import sql

# how the platform bench starts these services and talks to them
from acpipeline.bench.backfill_pass import BACKFILL_STATUS, DONE, LAUNCH, SUCCEEDED
from acpipeline.bench.dagster_runs import _run_failures
from acpipeline.bench.processes import _start, _stop, _tail
from acpipeline.bench.servers import _graphql, _wait_for_daemon, _wait_for_port, _wait_for_webserver, procfile
from acpipeline.core.media import MEDIA
from acpipeline.localpds.server import free_port
from acpipeline.operations.wipe import WIPE_JOB_NAME, WIPE_OP_NAME
from acpipeline.settings import DAGSTER_ENV
from acpipeline.sync.partition_sync import CHECK
from acpipeline.sync.partitions import partition_key, register_handles

from .helpers import add_moods, add_pieces, add_user, records, row_values
from .postgres import PgCluster
from .test_security import _hits, _session_tokens

PROJECT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT / "deploy"
BIN = Path(sys.executable).parent
RECORDS = AssetKey("atproto_records")
SYNC_ASSETS = ("source_items", "media_blobs", "atproto_records")
LOCATION = "acpipeline"  # deploy/workspace.yaml's location_name
DEPLOYED = {"code": 4266, "web": 3000}  # deploy/Procfile's ports, replaced by free ones
USERS = 3
DB_PASSWORD = "Db-" + secrets.token_urlsafe(12)  # the instance database's: must stay out of it too
MOODS = 3

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename ... on WorkspaceLocationEntry { loadStatus }
  }
}"""
SCHEDULE = {
    "repositoryLocationName": LOCATION,
    "repositoryName": "__repository__",
    "scheduleName": "reconcile_schedule",
}
START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) { __typename ... on PythonError { message } }
}"""
SCHEDULE_TICKS = """
query Ticks($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { scheduleState { ticks(limit: 5) { status runIds error { message } } } }
  }
}"""


# deploy/acpipeline.env's settings that name this test's world (its PDS, its homes) keep the test's values;
# the others are used as written, with the production folder moved under the test's temporary one.
WORLD_SETTINGS = {"PDS_URL", "DAGSTER_HOME", "ACPIPELINE_HOME", "MONGODB_NAME"}
DEPLOYED_ROOT = "/srv/acpipeline"


def deployed_environment(work: Path) -> dict[str, str]:
    """deploy/acpipeline.env as the services get it, paths substituted."""
    env = {}
    for line in (DEPLOY / "acpipeline.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if line.strip() and not line.startswith("#") and name not in WORLD_SETTINGS:
            env[name.strip()] = value.strip().replace(DEPLOYED_ROOT, str(work / "srv"))
    return env


def _mongodb_session_tokens() -> set[str]:
    from acpipeline.resources import shared_state

    sessions = shared_state.collection(shared_state.SESSIONS).find({})
    return {s[k] for s in sessions for k in ("accessJwt", "refreshJwt")}


def _substituted(command: list[str], ports: dict[str, int], workspace: Path) -> list[str]:
    """The Procfile's command with this test's ports and workspace, and the virtualenv's executable."""
    replace = {str(DEPLOYED[name]): str(port) for name, port in ports.items()}
    replace["deploy/workspace.yaml"] = str(workspace)
    return [str(BIN / command[0])] + [replace.get(arg, arg) for arg in command[1:]]


class Deployment:
    """The three services of deploy/Procfile on free ports, each its own process group."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.work, self.env = work, env
        self.ports = {"code": free_port(), "web": free_port()}
        self.url = f"http://127.0.0.1:{self.ports['web']}"
        self.workspace = work / "workspace.yaml"
        deployed_port = f"port: {DEPLOYED['code']}"
        text = (DEPLOY / "workspace.yaml").read_text()
        assert deployed_port in text
        self.workspace.write_text(text.replace(deployed_port, f"port: {self.ports['code']}"))
        self.commands = {
            name: _substituted(command, self.ports, self.workspace) for name, command in procfile().items()
        }
        self.logs = {name: work / f"{name}.log" for name in self.commands}
        self.processes: dict[str, subprocess.Popen] = {}
        self.http = httpx.Client(timeout=60)

    def start(self, name: str) -> subprocess.Popen:
        self.processes[name] = _start(self.commands[name], self.env, self.logs[name])
        return self.processes[name]

    def start_code_server(self) -> None:
        _wait_for_port(self.ports["code"], self.start("code"), self.logs["code"], timeout_s=180)

    def start_services(self, instance: DagsterInstance) -> None:
        """The code server, then the webserver and the daemon, until the UI has the location and every
        daemon beats."""
        self.start_code_server()
        web, daemon = self.start("web"), self.start("daemon")
        _wait_for_webserver(self.http, self.url, web, self.logs["web"], timeout_s=180)
        _wait_for_daemon(instance, daemon, self.logs["daemon"], timeout_s=180)

    def stop(self, name: str) -> None:
        _stop(self.processes.pop(name))

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return _graphql(self.http, self.url, query, variables)

    def close(self) -> None:
        for name in ("daemon", "web", "code"):  # the daemon first: no run starts while the others go
            if name in self.processes:
                self.stop(name)
        self.http.close()


@pytest.fixture
def deployment(world, postgres: PgCluster, tmp_path, monkeypatch) -> Iterator[Deployment]:
    db_name = postgres.create_database("deploy", owner="acpipeline", password=DB_PASSWORD)
    monkeypatch.setenv("DAGSTER_PG_URL", postgres.url(db_name, "acpipeline", DB_PASSWORD))  # a plain URL
    monkeypatch.setenv("ACPIPELINE_AUTOMATION", "stopped")  # the test starts the schedule itself
    monkeypatch.setenv("ACPIPELINE_SYNC_CRON", "* * * * *")  # its tick comes within a minute
    for name, value in deployed_environment(tmp_path).items():
        monkeypatch.setenv(name, value)  # shared state in MongoDB, the derived cache on a "volume"
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    # Dagster's range-run settings come from the product itself (the instance's storage, the code location),
    # not from this test process, whose conftest set them: the services start without them.
    deployment = Deployment(tmp_path, {k: v for k, v in os.environ.items() if k not in DAGSTER_ENV})
    try:
        yield deployment
    finally:
        deployment.close()


def _wait(what: str, done: Callable[[], object], timeout_s: float, evidence: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{evidence()}")


def _backfill(deployment: Deployment, instance: DagsterInstance, keys: list[str]) -> str:
    params = {
        "assetSelection": [{"path": [n]} for n in SYNC_ASSETS],
        "partitionNames": keys,
        "title": "deploy",
    }
    launched = deployment.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def status() -> str | None:
        found = deployment.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        return found if found in DONE else None

    final = _wait("the backfill", status, 300, lambda: _tail(deployment.logs["daemon"]))
    runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    failed = [r.run_id for r in runs if r.status != DagsterRunStatus.SUCCESS]
    assert final in SUCCEEDED and not failed, (final, _run_failures(instance, failed))
    # The daemon, started without them, still created the runs with Dagster's range-run settings (from the
    # instance's storage): one planned event per asset and run, not one per asset and partition.
    for run in runs:
        planned = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        assert len(planned) == len(SYNC_ASSETS), (run.run_id, len(planned), len(keys))
    return backfill_id


def _wait_for_runs(deployment: Deployment, instance: DagsterInstance, run_ids: list[str]) -> None:
    def finished() -> bool:
        return all(instance.get_run_by_id(run_id).is_finished for run_id in run_ids)

    _wait("the runs", finished, 300, lambda: _tail(deployment.logs["daemon"]))
    failed = [i for i in run_ids if instance.get_run_by_id(i).status != DagsterRunStatus.SUCCESS]
    assert not failed, _run_failures(instance, failed)


def _check_statuses(instance: DagsterInstance, key: str) -> list[str]:
    """The partition's own `pds_holds_desired_records` evaluations, newest first."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        CHECK.key, limit=10, partition_filter=PartitionKeyFilter(key=key)
    )
    return [h.status.value for h in history]


def _database(cluster: PgCluster, db_name: str) -> dict[str, bytes]:
    """Every table of the database, its rows' values as bytes, zlib-compressed values (Dagster's run and
    plan snapshots) decompressed."""
    tables = {}
    with contextlib.closing(cluster.connect(db_name)) as connection, connection.cursor() as cursor:
        cursor.execute("select table_name from information_schema.tables where table_schema = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(sql.SQL("select * from {}").format(sql.Identifier(table)))
            tables[f"postgres table {table}"] = row_values(cursor.fetchall())
    return tables


def test_the_deployment_runs_backfills_wipes_restarts_and_ticks_on_postgres(world, postgres, deployment):
    started = time.monotonic()
    db = world.db()
    users = [add_user(world, db, f"deploy{n}") for n in range(USERS)]
    for n, (sub, _, _) in enumerate(users):
        add_moods(db, sub, [f"mood {i} of user {n}" for i in range(MOODS)])
    add_pieces(db, users[0][0], ["deploypiece"])
    handles = [handle for _, handle, _ in users]
    keys = [partition_key(h, m) for m in ("mood", "piece") for h in handles]
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__module__.startswith("dagster_postgres")
        register_handles(instance, db)

        deployment.start_services(instance)
        web = deployment.processes["web"]
        up = time.monotonic()

        # A backfill through GraphQL: every partition its own materialization and its own check.
        _backfill(deployment, instance, keys)
        for _, handle, did in users:
            assert len(records(world, did, MEDIA["mood"].nsid)) == MOODS, handle
        assert len(records(world, users[0][2], MEDIA["piece"].nsid)) == 1
        for key in keys:
            record = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=RECORDS, asset_partitions=[key]), limit=1
            ).records[0]
            desired = record.asset_materialization.metadata["desired"].value
            assert desired == (MOODS if key.endswith("mood") else int(key.startswith(handles[0]))), key
            assert _check_statuses(instance, key) == ["SUCCEEDED"], key
        backfilled = time.monotonic()

        # A wipe through GraphQL, as the Launchpad sends it; the run queue and the daemon start it.
        _, wiped, wiped_did = users[1]
        config = {"handle": wiped, "confirm_handle": wiped, "media": ["mood"], "dry_run": False}
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": WIPE_JOB_NAME,
            },
            "runConfigData": {"ops": {WIPE_OP_NAME: {"config": config}}},
        }
        launched = deployment.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        _wait_for_runs(deployment, instance, [launched["run"]["runId"]])
        assert records(world, wiped_did, MEDIA["mood"].nsid) == []
        assert _check_statuses(instance, partition_key(wiped, "mood"))[0] == "FAILED"

        # A deploy: the code server restarts; the webserver reloads the location, as the README asks.
        deployment.stop("code")
        deployment.start_code_server()
        reloaded = deployment.graphql(RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
        assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded
        _wait_for_webserver(deployment.http, deployment.url, web, deployment.logs["web"], timeout_s=120)

        # The schedule's next tick (cron every minute here) requests runs for what is not proven converged,
        # the wiped partition among them, and the new code server runs them.
        started_schedule = deployment.graphql(START_SCHEDULE, {"selector": SCHEDULE})["startSchedule"]
        assert started_schedule["__typename"] == "ScheduleStateResult", started_schedule

        def ticked() -> list[dict]:
            ticks = deployment.graphql(SCHEDULE_TICKS, {"selector": SCHEDULE})["scheduleOrError"]
            return [t for t in ticks["scheduleState"]["ticks"] if t["status"] in ("SUCCESS", "FAILURE")]

        tick = _wait("the schedule's tick", ticked, 150, lambda: _tail(deployment.logs["daemon"]))[0]
        assert tick["status"] == "SUCCESS" and tick["runIds"], tick
        _wait_for_runs(deployment, instance, tick["runIds"])
        assert len(records(world, wiped_did, MEDIA["mood"].nsid)) == MOODS
        assert _check_statuses(instance, partition_key(wiped, "mood"))[0] == "SUCCEEDED"
        ran = time.monotonic()

    # No account password, no session token and not the database's password in any table of the
    # instance's database, nor in the services' logs; the scan sees the runs' events ...
    passwords = {u["atproto"]["password"] for u in db["users"].find({})}
    assert _session_tokens(world.home) == set()  # deploy/acpipeline.env keeps them in MongoDB
    tokens = _mongodb_session_tokens()
    assert len(passwords) == USERS and len(tokens) >= 2 * USERS
    passwords.add(DB_PASSWORD)
    scanned = _database(postgres, "deploy")
    scanned |= {f"{name} log": path.read_bytes() for name, path in deployment.logs.items()}
    everything = b"".join(scanned.values())
    assert wiped_did.encode() in everything and b"pds_holds_desired_records" in everything
    # ... the run and plan snapshots too, which Dagster stores zlib-compressed
    assert b'"PipelineSnapshot"' in scanned["postgres table snapshots"]
    assert b'"ExecutionPlanSnapshot"' in scanned["postgres table snapshots"]
    hits = _hits(passwords | tokens, scanned)
    assert hits == [], hits
    print(
        f"\nFIGURES deployment on Postgres: services up {up - started:.0f} s, backfill of {len(keys)} "
        f"partitions {backfilled - up:.0f} s, wipe + code server restart + schedule tick and runs "
        f"{ran - backfilled:.0f} s; secrets scan over {len(scanned)} tables and logs: {len(hits)} found"
    )
