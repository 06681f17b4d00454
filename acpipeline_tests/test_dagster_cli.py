"""Dagster's own commands in the checkout, started the way Dagster's docs start a project: from the
repository root with nothing exported (issue 27).

- Without `DAGSTER_HOME`, `dagster dev` and `dagster definitions validate` run on Dagster's temporary
  instance (a `.tmp_dagster_home_*` folder in the current folder, configured by its `dagster.yaml`): the
  project's event log must take its place from that instance instead of refusing to start, with the pool
  and queue settings of `dagster.yaml` still in force.
- Dagster reads `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS` and `DAGSTER_EVENT_BATCH_SIZE` from the
  environment of the process that creates a run and of the run: `dagster dev`, `dagster-webserver`,
  `dagster-daemon run` and the runs must get them with nobody exporting them (from opening the project's
  instance, not from importing the code location).

`conftest.py` puts those settings in this process's environment, so every command here starts from a clean
one: no `DAGSTER_*`, `ACPIPELINE_*`, `MONGODB_*` or `PDS_*` variable but the ones a test names
(`ACPIPELINE_HOME` in a temporary folder, so no test touches the checkout's demo world; the sensor stopped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from dagster import DagsterEventType, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._serdes import deserialize_value, serialize_value

from acpipeline.bench.processes import _start, _stop, _tail
from acpipeline.bench.servers import WORKSPACE, _graphql, _wait_for_webserver
from acpipeline.event_log import PooledSqliteEventLogStorage
from acpipeline.localpds.server import free_port
from acpipeline.operations.jobs import SYNC_JOB_NAME
from acpipeline.settings import DAGSTER_ENV
from acpipeline.sync.partitions import handle_partitions, partition_key

from .test_deploy import LAUNCH_RUN

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "acpipeline.definitions"  # workspace.yaml's python_module, which names the location
PDS_RESOURCE = (
    '{ topLevelResourceDetailsOrError(resourceSelector: {repositoryLocationName: "' + LOCATION + '", '
    'repositoryName: "__repository__", resourceName: "pds"}) '
    "{ ... on ResourceDetails { configuredValues { key value type } } } }"
)
SCRUBBED = ("DAGSTER_", "ACPIPELINE_", "MONGODB_", "PDS_")
TEMP_HOME = re.compile(r"Using temporary directory (\S+) for storage")
SERVER_TIMEOUT_S = 240  # two shared cores: a cold start of the webserver and its code server can be slow

INSTANCE = """{ instance { info runQueueConfig { maxConcurrentRuns }
    poolConfig { poolGranularity defaultPoolLimit } } }"""


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the project's and Dagster's variables, plus `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(SCRUBBED)}
    env.update(settings)
    return env


def _temporary_home(log: str) -> Path:
    found = TEMP_HOME.search(log)
    assert found, f"Dagster named no temporary instance:\n{log[-4000:]}"
    return Path(found.group(1))


def _dagster_env(process: psutil.Process) -> dict[str, str]:
    return {name: value for name, value in process.environ().items() if name in DAGSTER_ENV}


def _children(process: subprocess.Popen, wanted: int, timeout_s: float) -> list[psutil.Process]:
    """The Dagster processes `process` started (its services, their code servers): at least `wanted` of
    them. Other children are left out: Python's `platform` module runs a short-lived `file -b` of the
    interpreter, which is no Dagster process and inherits the environment from before the settings."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = [p for p in psutil.Process(process.pid).children(recursive=True) if _is_dagster(p)]
        if len(children) >= wanted or time.monotonic() > deadline:
            return children
        time.sleep(0.5)


def _is_dagster(process: psutil.Process) -> bool:
    try:
        return "dagster" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


@contextmanager
def _http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as http:
        yield http


def _wait_for_server_info(http: httpx.Client, url: str, process: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited ({process.returncode}):\n{_tail(log)}"
        try:
            answer = http.get(f"{url}/server_info", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"no answer at {url}/server_info in {SERVER_TIMEOUT_S} s:\n{_tail(log)}")


def test_dagsters_temporary_instance_keeps_the_pooled_event_log_in_its_folder(tmp_path, monkeypatch):
    """What Dagster's CLI opens without DAGSTER_HOME (`dagster._cli.utils._get_temporary_instance`): an
    instance in a temporary folder, configured by the current folder's dagster.yaml; and what every
    service and run started from it opens, from the instance's serialized ref."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(PROJECT))
    for opened in (ref, deserialize_value(serialize_value(ref), InstanceRef)):
        with DagsterInstance.from_ref(opened) as instance:
            storage = instance.event_log_storage
            assert type(storage) is PooledSqliteEventLogStorage
            assert Path(storage._base_dir) == tmp_path / "history" / "runs"  # Dagster's default place
            concurrency = instance.get_concurrency_config()
            assert concurrency.pool_config.default_pool_limit == 2
            assert concurrency.run_queue_config and concurrency.run_queue_config.max_concurrent_runs == 4
    assert (tmp_path / "history" / "runs" / "index.db").exists()


def test_definitions_validate_in_the_checkout_with_nothing_exported(tmp_path):
    done = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT,
        env=clean_env(ACPIPELINE_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output, output
    assert "All code locations passed validation" in output, output
    assert not _temporary_home(output).exists()  # Dagster removed its temporary instance


def test_dagster_dev_in_the_checkout_with_nothing_exported(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    env = clean_env(ACPIPELINE_HOME=str(tmp_path / "home"), ACPIPELINE_AUTOMATION="stopped")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "settings.env").write_text('PDS_URL="http://127.0.0.1:9"\n')  # the settings file
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    process = _start(command, env, log)  # in the checkout, its own process group
    temp_home: Path | None = None
    try:
        with _http() as http:
            assert _wait_for_server_info(http, url, process, log)["dagster_version"]
            _wait_for_webserver(http, url, process, log, timeout_s=SERVER_TIMEOUT_S)  # LOADED, no error
            entries = _graphql(http, url, WORKSPACE)["workspaceOrError"]["locationEntries"]
            assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
                (LOCATION, "RepositoryLocation")
            ]
            temp_home = _temporary_home(log.read_text())
            assert temp_home.parent == PROJECT and (temp_home / "history" / "runs" / "index.db").exists()

            # The temporary instance is the project's dagster.yaml: the pooled event log, in the
            # temporary folder, and the run queue and the `pds_writes` pool as configured.
            instance = _graphql(http, url, INSTANCE)["instance"]
            assert "PooledSqliteEventLogStorage" in instance["info"], instance["info"]
            assert instance["runQueueConfig"]["maxConcurrentRuns"] == 4
            assert instance["poolConfig"] == {"poolGranularity": "op", "defaultPoolLimit": 2}

            # The code server loaded the code location with the settings file's variables in its
            # environment (Dagster's secrets hook, dagster.yaml): the PDS resource reads PDS_URL from it.
            pds = _graphql(http, url, PDS_RESOURCE)["topLevelResourceDetailsOrError"]["configuredValues"]
            assert {"key": "url", "value": "PDS_URL", "type": "ENV_VAR"} in pds, pds

        # The webserver, the daemon and the code server it started (and so the runs) have the settings.
        services = _children(process, wanted=3, timeout_s=60)
        names = [" ".join(p.cmdline()) for p in services]
        assert any("dagster_webserver" in n for n in names) and any("dagster._daemon" in n for n in names)
        for service, name in zip(services, names, strict=True):
            assert _dagster_env(service) == DAGSTER_ENV, name

        # Stopped as Ctrl-C stops it: the services shut down and the temporary instance goes.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        assert not temp_home.exists()
        output = log.read_text(errors="replace")
        assert "Traceback" not in output and "RuntimeError" not in output, output[-4000:]
    finally:
        _stop(process)
        if temp_home is not None and temp_home.exists():
            shutil.rmtree(temp_home, ignore_errors=True)  # never leave it in the checkout


def test_a_started_service_stops_on_sigterm_when_its_starter_ignores_ctrl_c(tmp_path):
    """`make test &` from a script (a shell without job control) runs the suite with SIGINT ignored, and
    `dagster dev` makes SIGTERM what SIGINT is: the services it starts must get Ctrl-C back."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT), flush=True)"
    log = tmp_path / "probe.log"
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = _start([sys.executable, "-c", probe], clean_env(), log)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert process.wait(timeout=60) == 0
    assert log.read_text().strip() == str(signal.default_int_handler)


def _home_with_project_instance(tmp_path: Path) -> Path:
    """A DAGSTER_HOME as `make dev` and the CLI make it: the project's dagster.yaml, copied."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    return home


def test_a_run_dagster_webserver_creates_records_one_planned_event_per_asset(tmp_path, monkeypatch):
    """README's production command `dagster-webserver -w workspace.yaml` with only DAGSTER_HOME exported:
    a run over a range of two partitions, launched through GraphQL as a click does, has one planned
    materialization per asset with both partitions (without the setting: one per asset and partition).
    No daemon runs, so the run stays queued and nothing executes."""
    home = _home_with_project_instance(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # this test process's instance: the same home
    handles = ["one.test", "two.test"]
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(handle_partitions.name, handles)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "web.log"
    env = clean_env(
        DAGSTER_HOME=str(home), ACPIPELINE_HOME=str(tmp_path / "home"), ACPIPELINE_AUTOMATION="stopped"
    )
    command = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    process = _start(command, env, log)
    try:
        with _http() as http:
            _wait_for_webserver(http, url, process, log, timeout_s=SERVER_TIMEOUT_S)
            tags = {
                ASSET_PARTITION_RANGE_START_TAG: partition_key(handles[0], "mood"),
                ASSET_PARTITION_RANGE_END_TAG: partition_key(handles[1], "mood"),
            }
            params = {
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": "__repository__",
                    "jobName": SYNC_JOB_NAME,
                },
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            }
            launched = _graphql(http, url, LAUNCH_RUN, {"params": params})["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
        code_servers = {" ".join(p.cmdline()): _dagster_env(p) for p in _children(process, 1, 30)}
    finally:
        _stop(process)
    with DagsterInstance.get() as instance:
        planned = instance.get_records_for_run(
            run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        data = [r.event_log_entry.get_dagster_event().event_specific_data for r in planned]
    assert sorted(d.asset_key.to_user_string() for d in data) == sorted(
        ["source_items", "media_blobs", "atproto_records"]
    ), [(d.asset_key.to_user_string(), d.partition) for d in data]
    for d in data:
        assert d.partition is None
        assert sorted(d.partitions_subset.get_partition_keys()) == sorted(tags.values())
    # the code server it started for the workspace (and so the runs) got them from it too
    assert code_servers and all(env == DAGSTER_ENV for env in code_servers.values()), code_servers


def test_dagster_daemon_run_gets_the_settings(tmp_path):
    """README's `dagster-daemon run -w workspace.yaml` with only DAGSTER_HOME exported: the daemon creates
    the runs of backfills, the sensor and the schedule, so the settings must be in its environment; the
    code server it starts for the workspace (and the runs that one starts) inherits that environment."""
    home = _home_with_project_instance(tmp_path)
    env = clean_env(
        DAGSTER_HOME=str(home), ACPIPELINE_HOME=str(tmp_path / "home"), ACPIPELINE_AUTOMATION="stopped"
    )
    log = tmp_path / "daemon.log"
    process = _start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, log)
    try:
        code_servers = _children(process, wanted=1, timeout_s=SERVER_TIMEOUT_S)
        assert code_servers, _tail(log)
        for code_server in code_servers:
            assert _dagster_env(code_server) == DAGSTER_ENV, " ".join(code_server.cmdline())
        assert process.poll() is None, _tail(log)
    finally:
        _stop(process)


@pytest.mark.parametrize("explicit", [None, "false"])
def test_a_process_that_opens_the_instance_gets_the_settings_and_the_code_location_sets_none(
    tmp_path, explicit
):
    """Importing the code location leaves the environment as it was; opening the project's instance (what
    a run, the daemon and the webserver do; deploy/'s PostgreSQL storage: test_postgres_storage) puts the
    settings in it; an operator's explicit value still wins."""
    name = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
    settings = {
        "ACPIPELINE_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(_home_with_project_instance(tmp_path)),
    }
    if explicit is not None:
        settings[name] = explicit
    script = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import acpipeline.definitions\n"
        "imported = dict(os.environ)\n"
        "from dagster import DagsterInstance\n"
        "DagsterInstance.get().event_log_storage\n"
        "print(json.dumps([before == imported, dict(os.environ)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    unchanged, environment = json.loads(done.stdout.strip().splitlines()[-1])
    assert unchanged, "importing acpipeline.definitions changed the environment"
    expected = dict(DAGSTER_ENV, **({name: explicit} if explicit else {}))
    assert {k: environment.get(k) for k in DAGSTER_ENV} == expected
