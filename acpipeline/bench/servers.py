"""The Dagster servers of one platform bench, started as an operator runs them, and the waits until they
serve.

Two layouts (`layout`, `--layout`). `production`: a code server (`dagster api grpc -m
acpipeline.definitions`), `dagster-webserver` and `dagster-daemon run` as separate processes, as the
README's production layout has them: both load the code location from that one code server (a workspace
file with `grpc_server`), and it starts the runs. `dev`: what `make dev` runs, `dagster dev -w
workspace.yaml -h 127.0.0.1 -p PORT` in the checkout (the project's workspace file; DAGSTER_HOME holds the
copy of `dagster.yaml`), which starts its own code server, webserver and daemon; its webserver is the one
the bench talks to. The production layout takes either run launcher (`launcher`, `--launcher`): `default`
(each run a new process of the code server) or `celery` (deploy/celery/: the instance's dagster.yaml gets
that run launcher, a throwaway Redis is the broker, one worker of deploy/celery/Procfile with one process
per run the queue allows runs every run; its start-up comes before the passes). Either way the bench waits
for the code location to load in the webserver and for the daemon's heartbeats first."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from acpipeline.bench.processes import PROJECT, _kill_marked, _start, _stop, _tail

if TYPE_CHECKING:
    from dagster import DagsterInstance

BIN = Path(sys.executable).parent
LAYOUTS = ("production", "dev")
LAUNCHERS = ("default", "celery")
CELERY = PROJECT / "deploy" / "celery"
WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class BenchError(RuntimeError):
    """A pass failed or timed out, or a server did not come up: the message carries the evidence."""


def _graphql(
    http: httpx.Client, url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 120
) -> dict[str, Any]:
    response = http.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise BenchError(f"GraphQL errors: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


def procfile(path: Path = PROJECT / "deploy" / "Procfile") -> dict[str, list[str]]:
    """A Procfile (deploy/Procfile, deploy/celery/Procfile): service name -> its command, split as a shell
    would."""
    services = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            services[name.strip()] = shlex.split(command)
    return services


def _max_concurrent_runs() -> int:
    """The project's dagster.yaml: how many runs the queue lets run at once."""
    import yaml

    settings = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    return int(settings["concurrency"]["runs"]["max_concurrent_runs"])


def _check_layout(layout: str, launcher: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if launcher not in LAUNCHERS or (launcher == "celery" and layout != "production"):
        raise ValueError(f"launcher must be one of {LAUNCHERS} (celery with the production layout)")


def _wait_for_worker(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Until the Celery worker says it is ready (its code location loaded, its pool forked)."""
    deadline = time.monotonic() + timeout_s
    while " ready." not in _tail(log_path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the Celery worker did not start:\n{_tail(log_path)}")
        time.sleep(0.2)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Until the code server accepts connections on `port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the code server exited ({process.returncode}):\n{_tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise BenchError(f"the code server did not listen on port {port} within {timeout_s:.0f} s")


def _wait_for_webserver(
    http: httpx.Client, url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"dagster-webserver exited ({process.returncode}):\n{_tail(log_path)}")
        try:
            entries = _graphql(http, url, WORKSPACE, timeout=10)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, BenchError, KeyError, TypeError, ValueError):
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            bad = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
            if bad:
                raise BenchError(f"the code location failed to load in the webserver: {bad}")
            return
        time.sleep(1)
    raise BenchError(f"the webserver did not load the code location in {timeout_s:.0f} s:\n{_tail(log_path)}")


def _wait_for_daemon(
    instance: DagsterInstance, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Until every required daemon (backfill and run queue among them) has sent a healthy heartbeat."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"dagster-daemon exited ({process.returncode}):\n{_tail(log_path)}")
        statuses = dict(instance.get_daemon_statuses())
        if statuses and all(s.healthy for s in statuses.values()):
            return
        time.sleep(1)
    unhealthy = sorted(name for name, s in statuses.items() if not s.healthy)
    raise BenchError(f"daemons not healthy after {timeout_s:.0f} s: {unhealthy}\n{_tail(log_path)}")


class Servers:
    """The servers of one bench in one layout (`production`: a code server, the webserver and the daemon;
    `dev`: `dagster dev`, which starts its own), and the client that talks to the webserver."""

    def __init__(
        self,
        work: Path,
        env: dict[str, str],
        token: str,
        instance: DagsterInstance,
        log: Callable[[str], None],
        layout: str = "production",
        launcher: str = "default",
    ) -> None:
        from acpipeline.localpds.server import free_port

        _check_layout(layout, launcher)
        self.work, self.env, self.token, self.instance, self.log = work, env, token, instance, log
        self.layout, self.launcher = layout, launcher
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web_log, self.daemon_log = work / "webserver.log", work / "daemon.log"
        self.code_port = free_port()
        self.code_log = work / "code_server.log"
        self.dev_log = work / "dagster_dev.log"
        self.code_server: subprocess.Popen[bytes] | None = None
        self.webserver: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.dev: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = work / "celery_worker.log"
        self.http = httpx.Client(timeout=120)  # one client: a new one per poll costs a TLS context each

    def logs(self) -> dict[str, Path]:
        """The servers' logs, by server."""
        if self.layout == "dev":
            return {"dagster dev": self.dev_log}
        logs = {"code server": self.code_log, "webserver": self.web_log, "daemon": self.daemon_log}
        return logs | ({"celery worker": self.worker_log} if self.launcher == "celery" else {})

    def start(self, timeout_s: float = 600) -> None:
        if self.layout == "dev":
            self._start_dev(timeout_s)
        else:
            self._start_production(timeout_s)

    def _start_dev(self, timeout_s: float) -> None:
        """`dagster dev` as `make dev` runs it: in the checkout, with the project's workspace file (the
        code location `acpipeline.definitions`); it starts a code server, the webserver and the daemon."""
        args = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml"]
        self.dev = _start([*args, "-h", "127.0.0.1", "-p", str(self.port)], self.env, self.dev_log)
        _wait_for_webserver(self.http, self.url, self.dev, self.dev_log, timeout_s)
        _wait_for_daemon(self.instance, self.dev, self.dev_log, timeout_s)

    def _start_production(self, timeout_s: float) -> None:
        """The code server first, then the webserver and the daemon, which both load the code location
        from it (as the README's production layout has it) instead of each starting code servers of their
        own, and more of them at every workspace reload."""
        code = [str(BIN / "dagster"), "api", "grpc", "-m", "acpipeline.definitions"]
        code += ["-h", "127.0.0.1", "-p", str(self.code_port)]
        self.code_server = _start(code, self.env, self.code_log)
        workspace = self.work / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {self.code_port}\n      location_name: acpipeline\n"
        )
        _wait_for_port(self.code_port, self.code_server, self.code_log, timeout_s)
        web = [
            str(BIN / "dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.webserver = _start(web, self.env, self.web_log)
        self.daemon = _start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], self.env, self.daemon_log
        )
        _wait_for_webserver(self.http, self.url, self.webserver, self.web_log, timeout_s)
        _wait_for_daemon(self.instance, self.daemon, self.daemon_log, timeout_s)
        if self.launcher == "celery":
            self._start_worker(timeout_s)

    def _start_worker(self, timeout_s: float) -> None:
        """deploy/celery/Procfile's worker, one process per run the queue lets run at once: all the runs
        on this machine, as the default launcher's code server has them."""
        args = procfile(CELERY / "Procfile")["worker"]
        args[0] = str(BIN / args[0])
        args[args.index("--concurrency") + 1] = str(_max_concurrent_runs())
        self.worker = _start(args, self.env, self.worker_log)
        _wait_for_worker(self.worker, self.worker_log, timeout_s)

    def roots(self) -> list[int]:
        servers = (self.code_server, self.webserver, self.daemon, self.dev, self.worker)
        return [p.pid for p in servers if p is not None]

    def stop(self) -> int:
        """Daemon first (no run starts while the webserver goes), then the webserver, then the code server
        (or `dagster dev` and its process group), then any stray; returns how many strays there were. A
        second call does nothing."""
        servers = (self.daemon, self.worker, self.webserver, self.code_server, self.dev)
        processes = [p for p in servers if p is not None]
        self.daemon = self.worker = self.webserver = self.code_server = self.dev = None
        try:
            for process in processes:
                _stop(process)
        finally:
            for process in processes:  # interrupted above: no group outlives the bench all the same
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self.http.close()
            strays = _kill_marked(self.token) if processes else 0
        return strays


def _log_problems(path: Path) -> list[str]:
    """Lines of a server log that report an error (tracebacks, ERROR, exceptions)."""
    lines = []
    for line in _tail(path, 2_000_000).splitlines():
        if any(word in line for word in (" - ERROR - ", "Traceback", "Exception", "Error:")):
            lines.append(line.strip()[:300])
    return lines
