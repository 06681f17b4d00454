"""The platform benchmark: the platform-size dataset synced through Dagster as an operator runs it.

Method:
- One fresh local reference PDS, the demo media server, and a fresh ACPIPELINE_HOME and DAGSTER_HOME (a
  copy of the repo's `dagster.yaml`: at most 4 runs at once, 2 record stages at once in the pool
  `pds_writes`) in a temporary folder. The dataset is seeded as `acpipeline demo --seed-only` does it
  (`acpipeline.demo.environment.seed`: the accounts are created on the PDS and their sessions saved under
  ACPIPELINE_HOME, so the sync does not log in). Every handle with an account is registered as a dynamic
  partition in one call.
- The network (`rtt_ms`, `bandwidth_mbit`; `--rtt`, `--bandwidth`): two proxies (`counting_proxy`), one in
  front of the PDS and one in front of the media storage, put that network between the servers' runs and
  both (half the round trip each way, one more for a new connection, the bandwidth shared per direction);
  without them, the proxies are there all the same, at zero delay, and count. The servers get `PDS_URL` and
  the storage URL templates (`ACPIPELINE_IMAGE_URL`, `_GUEST_IMAGE_URL`, `_ZIP_URL`, `_BLOBS_URL`) pointing
  at the proxies. The seeding is given the storage proxy's oven bucket too, so the tapes' `mp4Url` lie
  under a storage root the runs know (a document's URL must, or the oven's MP4 is refused). The seeding,
  the reading after the full pass, the ceiling and the derivation alone do not go through the network: the
  derivation fetches the oven's objects through the storage proxy set to zero delay, the rest directly.
- Two layouts (`layout`, `--layout`). `production`: a code server (`dagster api grpc -m
  acpipeline.definitions`), `dagster-webserver` and `dagster-daemon run` as separate processes, as the
  README's production layout has them: both load the code location from that one code server (a workspace
  file with `grpc_server`), and it starts the runs. `dev`: what `make dev` runs, `dagster dev -w
  workspace.yaml -h 127.0.0.1 -p PORT` in the checkout (the project's workspace file; DAGSTER_HOME holds the
  copy of `dagster.yaml`), which starts its own code server, webserver and daemon; its webserver is the one
  the bench talks to. The production layout takes either run launcher (`launcher`, `--launcher`): `default`
  (each run a new process of the code server) or `celery` (deploy/celery/: the instance's dagster.yaml gets
  that run launcher, a throwaway Redis is the broker, one worker of deploy/celery/Procfile with one process
  per run the queue allows runs every run; its start-up comes before the passes). Either way the servers
  run with `ACPIPELINE_AUTOMATION=stopped` (sensor and schedule
  stay off) and the bench waits for the code location to load in the webserver and for the daemon's
  heartbeats first.
- Nothing exported: the servers get this process's environment without Dagster's settings for range runs
  (`acpipeline.settings.DAGSTER_ENV`, removed even when this process has them, as the CLI sets them), unless
  `extra_env` sets them; the project's entry points set them themselves (`apply_dagster_env`: the event log
  storage, the code location). `dagster_env` in the result is what the servers were given (null: not in
  their environment). After each pass the bench counts the `ASSET_MATERIALIZATION_PLANNED` events of every
  run in the instance (`planned_events_per_run`): with those settings in force a run over a range has one
  per asset (3), without them one per asset and partition.
- The PDS's rate limits (`pds_limits`, `--pds-limits`): `off` (the local PDS's default); `on`, the reference
  PDS's own limits (3,000 requests per 5 minutes per IP, getRepo excepted; 5,000 write points an hour and
  35,000 a day per account; createAccount 100 per 5 minutes, uploadBlob 1,000 a day, per IP); `bypass`, the
  same limits, and the servers get the PDS's bypass key (`ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY`, sent as
  `x-ratelimit-bypass`). With limits on the PDS has a bypass key in both modes, and the seeding uses it:
  it has to, since the platform's 979 accounts are over createAccount's 100 per 5 minutes (and its
  requests would otherwise spend the pass's first window); the reading after the full pass and the ceiling
  use it too (they are not the pipeline). With `on`, a run may defer partitions that hit an account's write
  points (runs tagged `acpipeline/deferred`), and a run may fail on a limit: the pass is reported, not
  raised, as long as the backfill ends. Each pass reports the deferred partitions
  (`acpipeline.sync.deferral.deferred_of_runs`), the 429 answers, and `floor_s`: the time the global limit
  alone would impose on the PDS requests the pass made (every request but getRepo at 10 a second;
  the limiter's window is fixed, so a pass under 3,000 requests could go faster), with `time / floor`.
  A probe (describeServer without and with the key, directly to the PDS) checks that the limits apply
  and that the key gets past them; after each pass another (without) reads what is left of the global
  window (`pds_limit_after.remaining`): with `bypass`, the pass spent none of it.
- A pass is a backfill launched as the UI does: GraphQL `launchPartitionBackfill` with the three sync
  assets and every partition key `handle|media` of every registered handle. It is timed by wall clock from
  the launch to the backfill's COMPLETED status (polled every second: the figure is good to about a second;
  the backfill daemon itself wakes every 30 s). The full pass starts from an empty PDS; the no-op pass is
  the same backfill again with nothing changed. Runs are counted from the instance (tag `dagster/backfill`).
- Requests (`platform_requests`): every request either proxy forwarded during the pass, counted by XRPC
  method (the PDS) and by HTTP method and file suffix (the storage, e.g. `storage:GET .png`), with the
  seconds spent in the proxy and at the server, the bytes, and the answers that were not 2xx; no exchange
  is kept (a pass makes tens of thousands). `platform_requests_per_record`: the full pass's PDS requests
  per record on the PDS; the no-op pass's PDS requests per account. Writes are the PDS's write methods.
- Memory: every 250 ms during each pass, the sum of the PSS of every process whose environment carries the
  bench's own marker variable (set only for the servers the bench starts: the code server, the webserver
  and the daemon, or `dagster dev`, so it covers them and every process they start, runs included) and of
  every descendant of those (the environments are read every 2 s, the process table every sample). A
  process's PSS is read again when its RSS moved by over 1 MB, at least every second: reading PSS is what
  costs, and the sampler must not load the machine. The PDS, the proxies and the bench itself are not
  counted. Each pass also reports the peak's breakdown by kind of process and the CPU seconds each kind
  used (the PDS and the bench process, proxies and media server included), and the machine's 1-minute load
  before and after it (others' work shows there). When the servers stop, any marked process left is killed.
- Records are counted on the PDS after the full pass: listRecords of every account and collection.
- Ceiling: the same records and thumbnails (values from listRecords, blobs from getBlob, read after the
  full pass) written by the thinnest client to one fresh account per account that holds records: for each
  account, uploadBlob of its blobs then applyWrites of up to 200 records (and under the body limit), 4
  accounts at a time (CEILING_WORKERS), directly to the PDS (no proxy). The accounts are created before
  the timing, 8 at a time, and each logs in once before the timing too: the pipeline's full pass does not
  log in either (its sessions come from the seeding). Those logins are timed on their own
  (`platform_ceiling_logins_s`): `strategies.write_ceiling`, which logs in inside its timing, would add them.
- Derivation alone (`platform_derive_s`, after the servers stopped): the pipeline's own blob stage
  (`derive_blobs`: fetching the images and ZIPs from the media server, thumbnails on 8 threads, one ffmpeg
  per core) over every wanted painting and tape of every account, into an empty derived-blob cache, with no
  Dagster and no PDS. The ceiling derives nothing; `platform_ceiling_s + platform_derive_s` is what the
  thinnest client would take if it had to make the blobs too (both are CPU-bound on the same two cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from acpipeline.bench.counting_proxy import WRITE_METHODS, CountingProxy, Exchange, Link
from acpipeline.bench.memory import PssReader
from acpipeline.bench.run import machine
from acpipeline.bench.strategies import PreparedRecord, _login, _ok, write_records
from acpipeline.core.media import MEDIA, MEDIA_NAMES
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV, RATELIMIT_BYPASS_HEADER
from acpipeline.settings import DAGSTER_ENV

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from acpipeline.demo.dataset import DatasetSummary
    from acpipeline.resources.pds import PdsClient

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYNC_ASSETS = ("source_items", "media_blobs", "atproto_records")
MARKER = "ACPIPELINE_BENCH_PLATFORM"  # in the servers' environment only: finds their whole process tree
SAMPLE_INTERVAL_S = 0.25
DISCOVER_EVERY_S = 2.0  # the sampler reads every process's environment this often
POLL_INTERVAL_S = 1.0
PROGRESS_EVERY_S = 30.0
CEILING_WORKERS = 4  # accounts written at once by the ceiling
ACCOUNT_WORKERS = 8  # ceiling accounts created at once (untimed)
READ_WORKERS = 4  # accounts listed (and their blobs fetched) at once after the full pass
FULL_TIMEOUT_S = 3 * 3600.0
NOOP_TIMEOUT_S = 1800.0
LAYOUTS = ("production", "dev")
LAUNCHERS = ("default", "celery")
CELERY = PROJECT / "deploy" / "celery"
BROKER_ENV = "ACPIPELINE_CELERY_BROKER_URL"  # deploy/celery/run_launcher.yaml reads it
PDS_LIMITS = ("off", "bypass", "on")
# The reference PDS's global limit (`dist/rate-limits.js`, "global-ip"): 3,000 requests per 5 minutes per IP,
# getRepo excepted (and the health check, which is no XRPC method).
GLOBAL_LIMIT_PER_S = 3000 / 300
NOT_GLOBALLY_LIMITED = frozenset({"com.atproto.sync.getRepo", "_health"})

KEYS = (
    "platform_records",
    "platform_records_expected",
    "platform_partitions",
    "platform_full_s",
    "platform_noop_s",
    "platform_noop_writes",
    "platform_full_runs",
    "platform_noop_runs",
    "platform_ceiling_s",
    "platform_ceiling_logins_s",
    "platform_peak_rss_mb",
    "platform_requests",
    "platform_requests_per_record",
    "platform_noop_pds_requests_per_account",
    "platform_planned_events_per_run",
    "platform_deferred_partitions",
    "platform_floor_s",
    "layout",
    "rtt_ms",
    "pds_limits",
    "dagster_env",
    "dataset",
    "machine",
    "date",
)
TARGETS = {"noop_s": 120.0, "ceiling_ratio": 0.5, "runs_per_pass": 100, "peak_rss_mb": 1536.0}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
}"""
WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
DONE = SUCCEEDED | {"COMPLETED_FAILED", "FAILED", "CANCELED", "CANCELING", "FAILING"}


class BenchError(RuntimeError):
    """A pass failed or timed out, or a server did not come up: the message carries the evidence."""


# ------------------------------------------------------------------------------------------ processes


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            args,
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_interruptible,
        )


def _interruptible() -> None:
    """Run in the child before its program: Ctrl-C back to its default. A shell without job control
    starts `cmd &` with SIGINT ignored, and Python keeps an inherited SIG_IGN; `dagster dev` then makes
    SIGTERM what SIGINT is, so it would ignore `_stop`'s SIGTERM too and stay until the SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the process and its process group (its code servers, the runs they started): SIGTERM, up to
    30 s, then SIGKILL to whatever of the group is left, also when interrupted meanwhile."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def _marked(token: str) -> list[psutil.Process]:
    """Every live process of the bench's servers: they and whatever they started (directly or not) carry
    the marker in their environment."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == token:
                found.append(process)
    return found


def _kill_marked(token: str) -> int:
    """SIGKILL, by pid, any process of the bench's servers that outlived their process groups."""
    left = [p for p in _marked(token) if p.pid != os.getpid()]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=10)
    return len(left)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _kind(process: psutil.Process) -> str:
    """What a process of the bench's Dagster tree is, from its command line."""
    line = " ".join(process.cmdline())
    # `dagster dev` starts `python -m dagster_webserver` and `python -m dagster._daemon run`
    if "dagster-webserver" in line or "-m dagster_webserver" in line:
        return "webserver"
    if "dagster-daemon" in line or "-m dagster._daemon" in line:
        return "daemon"
    if "api grpc" in line or "code-server" in line:
        return "code servers"
    if "dagster dev" in line:
        return "dagster dev"  # the dev layout's parent: it only watches its webserver and daemon
    if "ffmpeg" in line:
        return "ffmpeg"  # a run's tape encoder
    if "multiprocessing" in line or "acpipeline.run_workers.worker" in line:
        # a run is a spawned process of a code server (its resource tracker, its workers), or one of the
        # Celery layout's worker processes
        return "runs"
    if "watch_orphans" in line or line.startswith("tail "):
        return "log capture"  # Dagster's compute-log capture: two `tail -F` and two watchers per run
    return "other"


class ProcessSampler:
    """Every `interval_s` on a thread: the summed PSS of the bench's Dagster processes (the marked ones
    and the descendants of `roots`), its peak and the peak's breakdown by kind; and the CPU seconds each
    kind used while sampled (also for `others`, a name per pid tracked for CPU only: the PDS, the bench)."""

    def __init__(
        self,
        token: str,
        roots: Iterable[int],
        others: dict[str, int] | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.token, self.roots, self.interval_s = token, list(roots), interval_s
        self.others = dict(others or {})
        self.peak_bytes = 0
        self.peak_processes = 0
        self.peak_breakdown: dict[str, dict[str, float]] = {}
        self.samples = 0
        self._cpu: dict[tuple[int, float], list[Any]] = {}  # (pid, start) -> [kind, baseline, last]
        self._kinds: dict[tuple[int, float], str] = {}
        self._first = True
        self._marked_pids: set[int] = set()
        self._next_discovery = 0.0
        self._pss = PssReader()
        self.other_cmdlines: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-sampler")

    def processes(self) -> list[psutil.Process]:
        """The roots, the marked processes (every process's environment is read every DISCOVER_EVERY_S)
        and every descendant of those (one pass over the process table per sample: runs are children of
        code servers)."""
        now = time.monotonic()
        if now >= self._next_discovery:
            self._next_discovery = now + DISCOVER_EVERY_S
            self._marked_pids = {p.pid for p in _marked(self.token)}
        table: dict[int, psutil.Process] = {}
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            table[process.pid] = process
            children.setdefault(process.info["ppid"], []).append(process.pid)
        found: set[int] = set()
        todo = [pid for pid in (*self.roots, *self._marked_pids) if pid in table]
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, ()))
        return [table[pid] for pid in found]

    def _track_cpu(self, key: tuple[int, float], kind: str, process: psutil.Process) -> None:
        times = process.cpu_times()
        used = times.user + times.system
        if key not in self._cpu:
            # a process already running when sampling began counts from now; a new one from its start
            self._cpu[key] = [kind, used if self._first else 0.0, used]
        self._cpu[key][2] = used

    def sample(self) -> int:
        total, processes = 0, self.processes()
        by_kind: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for process in processes:
            try:
                key = (process.pid, process.create_time())
                if key not in self._kinds:
                    self._kinds[key] = _kind(process)
                    if self._kinds[key] == "other" and len(self.other_cmdlines) < 5:
                        self.other_cmdlines.add(" ".join(process.cmdline())[:200])
                kind = self._kinds[key]
                pss = self._pss.pss(process)
                self._track_cpu(key, kind, process)
            except psutil.Error:
                continue
            total += pss
            by_kind[kind] += pss
            counts[kind] += 1
        for kind, pid in self.others.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                self._track_cpu((pid, process.create_time()), kind, process)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, sum(counts.values())
            self.peak_breakdown = {
                kind: {"processes": counts[kind], "mb": round(by_kind[kind] / 1e6, 1)}
                for kind in sorted(counts)
            }
        self._first = False
        self.samples += 1
        return total

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) per kind while sampled; a process's last 250 ms may be missed."""
        used: Counter[str] = Counter()
        for kind, baseline, last in self._cpu.values():
            used[kind] += last - baseline
        return {kind: round(seconds, 1) for kind, seconds in used.most_common()}

    def _loop(self) -> None:
        while not self._done.is_set():
            started = time.monotonic()
            self.sample()
            self._done.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.sample()  # the CPU of the last runs, up to the pass's end

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 1e6, 1)

    def report(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": self.peak_mb,
            "peak_processes": self.peak_processes,
            "peak_breakdown_mb": self.peak_breakdown,
            "cpu_s": self.cpu_seconds(),
            "samples": self.samples,
            "other_processes": sorted(self.other_cmdlines),
        }


# ------------------------------------------------------------------------------------------ requests


class TallyingProxy(CountingProxy):
    """A CountingProxy that keeps, per method, how many requests, their seconds in the proxy and at the
    server, new connections, bytes and the answers that were not 2xx, instead of every exchange: a pass
    over the platform makes tens of thousands of requests. `set_network` changes the modelled network."""

    def __init__(
        self, upstream: str, rtt_ms: float = 0.0, bandwidth_mbit: float | None = None, name: str = "pds"
    ) -> None:
        super().__init__(upstream, rtt_ms, bandwidth_mbit, name=name)
        self.tally: dict[str, dict[str, Any]] = {}

    def _keep(self, exchange: Exchange) -> None:
        if exchange.method in WRITE_METHODS:
            self.counts[exchange.method] += 1
        row = self.tally.get(exchange.method)
        if row is None:
            row = self.tally[exchange.method] = {
                "n": 0,
                "s": 0.0,
                "server_s": 0.0,
                "new_connections": 0,
                "sent": 0,
                "received": 0,
                "statuses": Counter(),
            }
        row["n"] += 1
        row["s"] += exchange.end - exchange.start
        row["server_s"] += exchange.upstream_s
        row["new_connections"] += exchange.new_connection
        row["sent"] += exchange.sent
        row["received"] += exchange.received
        if not 200 <= exchange.status < 300:
            row["statuses"][exchange.status] += 1

    def take_tally(self) -> dict[str, dict[str, Any]]:
        """The tally since the last call, forgotten here."""
        with self._lock:
            self._settle()
            taken, self.tally = self.tally, {}
        return taken

    def set_network(self, rtt_ms: float, bandwidth_mbit: float | None = None) -> None:
        """From the next request on, this round trip and bandwidth."""
        self.rtt_s, self.bandwidth_mbit = rtt_ms / 1000, bandwidth_mbit
        self.up, self.down = Link(self.rtt_s / 2, bandwidth_mbit), Link(self.rtt_s / 2, bandwidth_mbit)


def _rows(tally: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for method, row in sorted(tally.items(), key=lambda item: (-item[1]["n"], item[0])):
        out[method] = {
            "n": row["n"],
            "s": round(row["s"], 2),
            "server_s": round(row["server_s"], 2),
            "new_connections": row["new_connections"],
            "sent_mb": round(row["sent"] / 1e6, 2),
            "received_mb": round(row["received"] / 1e6, 2),
            "not_2xx": {str(status): n for status, n in sorted(row["statuses"].items())},
        }
    return out


def pass_requests(pds: dict[str, dict[str, Any]], storage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A pass's requests from both proxies' tallies: per method, the totals, the PDS requests the global
    limit counts (`pds_globally_limited`) and the 429 answers."""
    pds_total = sum(row["n"] for row in pds.values())
    storage_total = sum(row["n"] for row in storage.values())
    return {
        "pds": _rows(pds),
        "storage": _rows(storage),
        "pds_total": pds_total,
        "storage_total": storage_total,
        "total": pds_total + storage_total,
        "pds_writes": sum(row["n"] for method, row in pds.items() if method in WRITE_METHODS),
        "pds_globally_limited": sum(
            row["n"] for method, row in pds.items() if method not in NOT_GLOBALLY_LIMITED
        ),
        "pds_429": sum(row["statuses"].get(429, 0) for row in pds.values()),
    }


def request_counts(requests: dict[str, Any]) -> dict[str, Any]:
    """The counts alone: per PDS method, per storage method, and the totals."""
    return {
        "pds": {method: row["n"] for method, row in requests["pds"].items()},
        "storage": {method: row["n"] for method, row in requests["storage"].items()},
        "pds_total": requests["pds_total"],
        "storage_total": requests["storage_total"],
        "total": requests["total"],
    }


def _planned_events(instance: DagsterInstance, run_ids: list[str]) -> dict[str, Any]:
    """The ASSET_MATERIALIZATION_PLANNED events of each run: one per asset with Dagster's settings for
    range runs in force where the run was created, one per asset and partition without them."""
    from dagster import DagsterEventType

    counts = [
        len(
            instance.get_records_for_run(
                run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            ).records
        )
        for run_id in run_ids
    ]
    return {
        "max": max(counts, default=0),
        "min": min(counts, default=0),
        "total": sum(counts),
        "runs": len(counts),
    }


def _probe_limits(pds_url: str, key: str | None = None) -> dict[str, Any]:
    """Whether the PDS applies rate limits (describeServer's `ratelimit-limit` header without the key), what
    is left of this IP's global window (`remaining`, this probe counted), and whether the key gets past
    them (no such header with it)."""
    with httpx.Client(base_url=pds_url, timeout=30) as http:
        plain = http.get("/xrpc/com.atproto.server.describeServer")
        out: dict[str, Any] = {"limited": "ratelimit-limit" in plain.headers}
        out["policy"] = plain.headers.get("ratelimit-policy")
        remaining = plain.headers.get("ratelimit-remaining")
        out["remaining"] = int(remaining) if remaining and remaining.isdigit() else None
        if key:
            keyed = http.get(
                "/xrpc/com.atproto.server.describeServer", headers={RATELIMIT_BYPASS_HEADER: key}
            )
            out["bypassed"] = "ratelimit-limit" not in keyed.headers
    return out


# ------------------------------------------------------------------------------------------ Dagster


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


def _run_failures(instance: DagsterInstance, run_ids: list[str], limit: int = 10) -> list[str]:
    """The first failure message of each failed run (step failures first)."""
    from dagster import DagsterEventType

    out = []
    for run_id in run_ids[:limit]:
        events = instance.all_logs(
            run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        )
        messages = []
        for event in events:
            data = event.dagster_event.event_specific_data if event.dagster_event else None
            error = getattr(data, "error", None)
            dagster_event = event.dagster_event
            text = error.message if error is not None else ((dagster_event and dagster_event.message) or "")
            messages.append(f"{event.step_key or 'run'}: {text.strip()[:600]}")
        out.append(f"{run_id}: " + (" | ".join(messages) or "no failure event"))
    return out


def _launch_to_start(instance: DagsterInstance, record: Any) -> float:
    """Seconds from the run's launch (its RUN_STARTING event) to its RUN_START."""
    from dagster import DagsterEventType

    starting = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.PIPELINE_STARTING)
    return record.start_time - starting[0].timestamp if starting else 0.0


def _percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))], 2)


def _pass_runs(instance: DagsterInstance, backfill_id: str, order: list[str]) -> dict[str, Any]:
    """The pass's runs from the instance: statuses, partitions per run, and where the wall time went."""
    from dagster import DagsterRunStatus, RunsFilter

    from acpipeline.sync.deferral import DEFERRED_TAG
    from acpipeline.sync.partitions import RANGE_END_TAG, RANGE_START_TAG, range_members

    records = instance.get_run_records(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    statuses = Counter(r.dagster_run.status.value for r in records)
    sizes = []
    for record in records:
        tags = record.dagster_run.tags
        if RANGE_START_TAG in tags:
            sizes.append(len(range_members(order, tags[RANGE_START_TAG], tags[RANGE_END_TAG])))
        else:
            sizes.append(1)
    durations = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    created = [r.create_timestamp.timestamp() for r in records]
    failed = [r.dagster_run.run_id for r in records if r.dagster_run.status != DagsterRunStatus.SUCCESS]
    origin = min(created, default=0.0)
    launched_to_start = sorted(_launch_to_start(instance, r) for r in records if r.start_time)
    timeline: list[dict[str, Any]] = sorted(
        (
            {
                "media": record.dagster_run.tags.get(RANGE_START_TAG, "|?").rpartition("|")[2],
                "partitions": size,
                "started_s": round(record.start_time - origin, 1),
                "took_s": round(record.end_time - record.start_time, 1),
            }
            for record, size in zip(records, sizes, strict=True)
            if record.start_time and record.end_time
        ),
        key=lambda run: float(run["started_s"]),
    )

    return {
        "runs": len(records),
        "run_ids": [r.dagster_run.run_id for r in records],
        "deferred_runs": sum(r.dagster_run.tags.get(DEFERRED_TAG) == "true" for r in records),
        # runs the Celery launcher sent to a worker (the others: processes of the code server)
        "runs_in_celery_workers": sum(DAGSTER_CELERY_TASK_ID_TAG in r.dagster_run.tags for r in records),
        # from the launch (RUN_STARTING) to RUN_START, the run's process up and its code loaded
        "run_start_s_p50": _percentile(launched_to_start, 0.5),
        "run_start_s_p90": _percentile(launched_to_start, 0.9),
        "statuses": dict(statuses),
        "failed_run_ids": failed,
        "partitions_per_run_max": max(sizes, default=0),
        "partitions_in_runs": sum(sizes),
        "run_s_median": round(statistics.median(durations), 2) if durations else 0.0,
        "run_s_max": round(max(durations), 2) if durations else 0.0,
        "first_run_created": min(created, default=0.0),
        "first_run_started": min(starts, default=0.0),
        "last_run_ended": max(ends, default=0.0),
        "timeline": timeline,  # each run's media, size, start (from the first run's creation) and length
    }


class Servers:
    """The servers of one bench in one layout (`production`: a code server, the webserver and the daemon;
    `dev`: `dagster dev`, which starts its own), and the pass that runs a backfill through them."""

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

    def run_pass(
        self,
        label: str,
        keys: list[str],
        order: list[str],
        proxies: tuple[TallyingProxy, TallyingProxy],
        timeout_s: float,
        strict: bool = True,
    ) -> dict[str, Any]:
        """One backfill of `keys` through GraphQL, timed from the launch to its COMPLETED status, with the
        requests both proxies (PDS, storage) forwarded meanwhile. `strict` False (the PDS's limits on): a
        backfill that ends with failed runs is reported instead of raised."""
        from acpipeline.sync.deferral import deferred_of_runs

        pds_proxy, storage_proxy = proxies
        before = pds_proxy.write_counts()
        outside = sum(row["n"] for p in proxies for row in p.take_tally().values())
        params = {
            "assetSelection": [{"path": [name]} for name in SYNC_ASSETS],
            "partitionNames": keys,
            "title": f"platform bench: {label} pass",
        }
        self.log(f"{label} pass: launching a backfill of {len(keys)} partitions ...")
        load_before = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min: others' work shows here
        started, wall_started = time.perf_counter(), time.time()
        launched = _graphql(self.http, self.url, LAUNCH, {"params": params})["launchPartitionBackfill"]
        if launched["__typename"] != "LaunchBackfillSuccess":
            raise BenchError(f"{label} pass: launchPartitionBackfill answered {launched}")
        backfill_id = launched["backfillId"]
        launch_s = time.perf_counter() - started
        status, next_report = None, started + PROGRESS_EVERY_S
        while True:
            status = _graphql(self.http, self.url, BACKFILL_STATUS, {"id": backfill_id})[
                "partitionBackfillOrError"
            ].get("status")
            now = time.perf_counter()
            if status in DONE:
                break
            if now - started > timeout_s:
                raise BenchError(
                    self._failure(label, backfill_id, f"still {status} after {timeout_s:.0f} s", order)
                )
            if now >= next_report:
                self.log(f"{label} pass: {now - started:.0f} s, {self._progress(backfill_id)}")
                next_report += PROGRESS_EVERY_S
            time.sleep(POLL_INTERVAL_S)
        elapsed = time.perf_counter() - started
        load_after = [round(x, 2) for x in os.getloadavg()]
        requests = pass_requests(pds_proxy.take_tally(), storage_proxy.take_tally())
        ended = status in SUCCEEDED or (not strict and status == "COMPLETED_FAILED")
        if not ended:
            raise BenchError(self._failure(label, backfill_id, status, order))
        runs = _pass_runs(self.instance, backfill_id, order)
        if runs["failed_run_ids"] and strict:
            raise BenchError(self._failure(label, backfill_id, f"{status} with failed runs", order))
        run_ids = runs.pop("run_ids")
        writes = {k: v for k, v in (Counter(pds_proxy.write_counts()) - Counter(before)).items() if v}
        backfill = self.instance.get_backfill(backfill_id)
        end = getattr(backfill, "backfill_end_timestamp", None)
        deferred = deferred_of_runs(self.instance, run_ids)
        floor_s = requests["pds_globally_limited"] / GLOBAL_LIMIT_PER_S
        details = {
            "backfill_id": backfill_id,
            "status": status,
            "wall_s": round(elapsed, 2),
            "launch_s": round(launch_s, 2),
            "daemon_s": round(end - backfill.backfill_timestamp, 2) if end and backfill else None,
            "launch_to_first_run_s": _since(runs.pop("first_run_created"), wall_started),
            "launch_to_first_start_s": _since(runs.pop("first_run_started"), wall_started),
            "last_run_end_to_done_s": round(wall_started + elapsed - runs["last_run_ended"], 2)
            if runs["last_run_ended"]
            else None,
            "writes": writes,
            "requests": requests,
            "requests_outside_passes": outside,  # between the passes (none expected), not counted above
            "planned_events_per_run": _planned_events(self.instance, run_ids),
            "deferred_partitions": len(deferred),
            "deferred_until": datetime.fromtimestamp(max(deferred.values()), UTC).isoformat(
                timespec="seconds"
            )
            if deferred
            else None,
            "floor_s": round(floor_s, 1),
            "time_over_floor": round(elapsed / floor_s, 2) if floor_s else None,
            "failures": _run_failures(self.instance, runs["failed_run_ids"]),
            "load_before": load_before[0],
            "load_after": load_after[0],
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            **runs,
        }
        details.pop("last_run_ended")
        self.log(
            f"{label} pass: {status} in {elapsed:.1f} s, {runs['runs']} runs "
            f"(median {runs['run_s_median']} s, longest {runs['run_s_max']} s), "
            f"writes at the PDS: {sum(writes.values())} {writes or ''}; requests: PDS "
            f"{requests['pds_total']}, storage {requests['storage_total']}; planned events per run "
            f"{details['planned_events_per_run']['min']}-{details['planned_events_per_run']['max']}"
            + (f"; {len(deferred)} partitions deferred" if deferred else "")
        )
        return details

    def _progress(self, backfill_id: str) -> str:
        from dagster import RunsFilter

        runs = self.instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
        statuses = Counter(r.status.value.lower() for r in runs)
        return f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))

    def _failure(self, label: str, backfill_id: str, what: str, order: list[str]) -> str:
        runs = _pass_runs(self.instance, backfill_id, order)
        failures = _run_failures(self.instance, runs["failed_run_ids"])
        name, path = list(self.logs().items())[-1]  # the daemon's (or dagster dev's)
        return (
            f"{label} pass: backfill {backfill_id} {what}; runs {runs['statuses']}\n"
            + "".join(f"  failed run {line}\n" for line in failures)
            + f"--- {name} log (tail) ---\n{_tail(path)}"
        )


def _since(timestamp: float, origin: float) -> float | None:
    return round(timestamp - origin, 2) if timestamp else None


def _log_problems(path: Path) -> list[str]:
    """Lines of a server log that report an error (tracebacks, ERROR, exceptions)."""
    lines = []
    for line in _tail(path, 2_000_000).splitlines():
        if any(word in line for word in (" - ERROR - ", "Traceback", "Exception", "Error:")):
            lines.append(line.strip()[:300])
    return lines


# ------------------------------------------------------------------------------------------ the PDS side


def _read_account(client: PdsClient, did: str, with_blobs: bool) -> list[PreparedRecord]:
    """The account's records as the pipeline wrote them, with the bytes of their blobs (getBlob)."""
    out = []
    for rules in MEDIA.values():
        for record in client.list_records(did, rules.nsid):
            value = record["value"]
            blobs: tuple[tuple[bytes, str], ...] = ()
            if with_blobs:
                blobs = tuple(
                    (client.get_blob(did, value[name]["ref"]["$link"]), value[name]["mimeType"])
                    for name in rules.blob_fields
                    if name in value
                )
            out.append(PreparedRecord(rules.nsid, record["uri"].rsplit("/", 1)[-1], value, blobs))
    return out


def read_records(
    pds_url: str, dids: list[str], with_blobs: bool = True, bypass_key: str | None = None
) -> dict[str, list[PreparedRecord]]:
    """Every account's records (and their blobs), `READ_WORKERS` accounts at a time; `bypass_key`: past the
    PDS's rate limits (else no key, whatever this process's environment says)."""
    from acpipeline.resources.pds import PdsClient

    client = PdsClient(pds_url, ratelimit_bypass_key=bypass_key or "")
    try:
        with ThreadPoolExecutor(READ_WORKERS) as pool:
            return dict(
                zip(dids, pool.map(lambda did: _read_account(client, did, with_blobs), dids), strict=True)
            )
    finally:
        client.close()


def _create_account(http: httpx.Client, handle: str, password: str, email: str) -> str:
    body = {"handle": handle, "password": password, "email": email}
    did: str = _ok(http.post("/xrpc/com.atproto.server.createAccount", json=body)).json()["did"]
    return did


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds so far of this process, its finished children, and the processes `pids`."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def run_ceiling(
    pds_url: str,
    prepared: list[list[PreparedRecord]],
    log: Callable[[str], None],
    pds_pid: int | None = None,
    bypass_key: str | None = None,
) -> dict[str, Any]:
    """Fresh accounts (untimed), their logins (timed apart), then the writes of every account (timed, with
    the CPU seconds of this process and the PDS); `bypass_key`: every call past the PDS's rate limits."""
    tag, password = secrets.token_hex(3), secrets.token_urlsafe(16)
    limits = httpx.Limits(max_connections=ACCOUNT_WORKERS * 2, max_keepalive_connections=ACCOUNT_WORKERS * 2)
    headers = {RATELIMIT_BYPASS_HEADER: bypass_key} if bypass_key else {}
    with httpx.Client(base_url=pds_url, timeout=300, limits=limits, headers=headers) as http:
        log(f"ceiling: creating {len(prepared)} fresh accounts ({ACCOUNT_WORKERS} at a time, untimed) ...")

        def create(n: int) -> str:
            return _create_account(http, f"c{n}x{tag}.test", password, f"c{n}x{tag}@example.com")

        with ThreadPoolExecutor(ACCOUNT_WORKERS) as pool:
            dids = list(pool.map(create, range(len(prepared))))
        started = time.perf_counter()
        with ThreadPoolExecutor(CEILING_WORKERS) as pool:
            tokens = list(pool.map(lambda did: _login(http, did, password), dids))
        logins_s = time.perf_counter() - started
        records = sum(len(r) for r in prepared)
        blobs = sum(len(b) for r in prepared for p in r for b, _ in p.blobs)
        log(
            f"ceiling: {records} records and {blobs / 1e6:.1f} MB of blobs to {len(dids)} accounts, "
            f"{CEILING_WORKERS} accounts at a time ..."
        )
        started, cpu = time.perf_counter(), _cpu_s([pds_pid] if pds_pid else [])
        with ThreadPoolExecutor(CEILING_WORKERS) as pool:
            list(pool.map(lambda job: write_records(http, *job), zip(dids, tokens, prepared, strict=True)))
        writes_s = time.perf_counter() - started
        cpu = _cpu_s([pds_pid] if pds_pid else []) - cpu
    return {
        "s": writes_s,
        "cpu_s": cpu,
        "logins_s": logins_s,
        "accounts": len(dids),
        "records": records,
        "blob_bytes": blobs,
    }


# ------------------------------------------------------------------------------------------ the bench


def run_derive(db: Any, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The blob stage alone over every wanted painting and tape of every account (see the module)."""
    from acpipeline.definitions import build_definitions
    from acpipeline.resources import resolved
    from acpipeline.sync.blobs import derive_blobs
    from acpipeline.sync.cache import DerivedCache
    from acpipeline.sync.extract import extract_owners, find_accounts

    owners = [account.owner for account in find_accounts(db).by_handle.values()]
    cache = DerivedCache(cache_dir)
    seconds, cpu_s, derived = 0.0, 0.0, 0
    with resolved(build_definitions(), "storage") as storage:
        for media in ("painting", "tape"):
            items = [item for found in extract_owners(db, MEDIA[media], owners).values() for item in found]
            log(f"derivation alone: {media}s of {len(owners)} accounts ...")
            started, cpu = time.perf_counter(), _cpu_s([])
            _, stats = derive_blobs(items, media, storage, cache)
            seconds += time.perf_counter() - started
            cpu_s += _cpu_s([]) - cpu
            derived += stats.derived
    log(f"derivation alone: {derived} paintings and tapes derived in {seconds:.1f} s")
    return {"s": seconds, "cpu_s": cpu_s, "items": derived}


def run_platform_bench(
    json_path: str | None = None,
    size: str = "platform",
    log: Callable[[str], None] = print,
    *,
    full_timeout_s: float = FULL_TIMEOUT_S,
    noop_timeout_s: float = NOOP_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
    rtt_ms: float | None = None,
    bandwidth_mbit: float | None = None,
    layout: str = "production",
    pds_limits: str = "off",
    launcher: str = "default",
) -> dict[str, Any]:
    """Every figure of the platform benchmark (see the module's docstring); `size="small"` runs the same
    steps on the demo data (smoke test). Every process it starts is stopped before it returns or raises.

    `rtt_ms`, `bandwidth_mbit`: the network between the servers' runs and the PDS and storage (none: the
    proxies count at zero delay). `layout`: "production" or "dev". `pds_limits`: "off", "bypass" or "on".
    `launcher`: "default" (each run a process the code server starts) or "celery" (deploy/celery/: the
    instance's dagster.yaml gets its run launcher, a throwaway Redis is the broker, and one worker of
    deploy/celery/Procfile runs every run, with one process per run the queue lets run at once).
    The servers get this process's environment without `acpipeline.settings.DAGSTER_ENV`'s variables (the
    project's entry points set them); `extra_env` is added last (experiments, e.g.
    `{"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "false"}`). What they were given is in the result
    (`dagster_env`: null for a variable they did not get)."""
    from acpipeline.demo import SIZES

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    _check_layout(layout, launcher)
    if pds_limits not in PDS_LIMITS:
        raise ValueError(f"pds_limits must be one of {PDS_LIMITS}, not {pds_limits!r}")
    from dagster import DagsterInstance

    from acpipeline.demo.environment import TEMPLATE_ENV, seed, start_environment
    from acpipeline.resources.mongo import MongoResource
    from acpipeline.sync.partitions import handle_partitions, partition_key, register_handles

    bench_started = time.perf_counter()
    rtt = float(rtt_ms or 0.0)
    limited = pds_limits != "off"
    bypass_key = secrets.token_urlsafe(24) if limited else None  # the seeding's, and `bypass` mode's
    work = Path(tempfile.mkdtemp(prefix="acpipeline-bench-platform-"))
    home, dagster_home = work / "home", work / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(PROJECT / "dagster.yaml", dagster_home / "dagster.yaml")
    if launcher == "celery":
        with open(dagster_home / "dagster.yaml", "a") as instance_file:
            instance_file.write("\n" + (CELERY / "run_launcher.yaml").read_text())
    saved = dict(os.environ)
    for name in ("MONGODB_CONNECTION_STRING", "PDS_URL", "PDS_ADMIN_PASSWORD", RATELIMIT_BYPASS_ENV):
        os.environ.pop(name, None)  # never a real database or PDS, nor an operator's bypass key
    os.environ.update(
        ACPIPELINE_HOME=str(home), DAGSTER_HOME=str(dagster_home), ACPIPELINE_AUTOMATION="stopped"
    )
    token = secrets.token_hex(8)
    failed = True
    servers: Servers | None = None
    # A SIGTERM (a `timeout`, a CI runner) ends the bench through its cleanup like Ctrl-C does, instead of
    # leaving the PDS, the webserver and the daemon running in their own sessions.
    previous_sigterm = _raise_on_sigterm()
    with contextlib.ExitStack() as stack:
        try:
            world = start_environment(
                work / "media", log=log, rate_limits=limited, rate_limit_bypass_key=bypass_key
            )
            stack.callback(world.close)
            if launcher == "celery":
                from acpipeline.bench.redis import start_redis

                redis = start_redis()
                stack.callback(redis.stop)
                os.environ[BROKER_ENV] = redis.url
            pds_url = world.pds_url
            probe = _probe_limits(pds_url, bypass_key)
            if limited and not probe["limited"]:
                raise BenchError(f"the PDS was started with its rate limits on, but applies none: {probe}")
            pds_proxy = TallyingProxy(pds_url, rtt, bandwidth_mbit, name="pds")
            storage_proxy = TallyingProxy(world.media.url, rtt, bandwidth_mbit, name="storage")
            for proxy in (pds_proxy, storage_proxy):
                proxy.start()
                stack.callback(proxy.stop)
            through_proxy = {
                TEMPLATE_ENV[name]: template.replace(world.media.url, storage_proxy.url)
                for name, template in world.media.url_templates().items()
            }
            # The oven's objects (tapes' `mp4Url`) through the storage proxy from the seeding on: a document's
            # URL must lie under a storage root the runs know. The rest of this process reaches storage
            # directly (the derivation alone).
            blobs_env = TEMPLATE_ENV["blobs_url"]
            os.environ[blobs_env] = through_proxy[blobs_env]
            mongo = MongoResource()
            stack.callback(mongo.close)
            db = mongo.db()
            log(
                f"seeding the {size} dataset ..."
                + (" (with the PDS's bypass key: its limits are on)" if limited else "")
            )
            seeded = time.perf_counter()
            if bypass_key:
                os.environ[RATELIMIT_BYPASS_ENV] = bypass_key
            try:
                summary = seed(world.pds_url, world.media.media_root, db, size=size, log=log)
            finally:
                os.environ.pop(RATELIMIT_BYPASS_ENV, None)
            seed_s = time.perf_counter() - seeded
            instance = stack.enter_context(DagsterInstance.get())
            register_handles(instance, db)
            assert handle_partitions.name is not None
            order = list(instance.get_dynamic_partitions(handle_partitions.name))
            keys = [partition_key(handle, media) for handle in order for media in MEDIA_NAMES]
            dataset = _dataset(summary, order)
            log(
                f"seeded in {seed_s:.0f} s: {dataset['users']} users, {dataset['accounts']} accounts, "
                f"{dataset['records_expected_total']} records expected; {len(keys)} partitions"
            )

            # Nothing of Dagster's settings exported: the servers must set them themselves.
            env = {name: value for name, value in os.environ.items() if name not in DAGSTER_ENV}
            env.update(
                through_proxy, PDS_URL=pds_proxy.url, ACPIPELINE_AUTOMATION="stopped", **{MARKER: token}
            )
            if pds_limits == "bypass" and bypass_key:
                env[RATELIMIT_BYPASS_ENV] = bypass_key
            env.update(extra_env or {})
            dagster_env = {name: env.get(name) for name in sorted({*DAGSTER_ENV, *(extra_env or {})})}
            given = {name: value for name, value in dagster_env.items() if value is not None}
            servers = Servers(work, env, token, instance, log, layout=layout, launcher=launcher)
            stack.callback(_stop_servers, servers, log)
            log(
                f"network: {rtt:g} ms round trip, bandwidth {bandwidth_mbit or 'unlimited'} Mbit/s (PDS and "
                f"storage); PDS rate limits {pds_limits}; Dagster's settings given to the servers: "
                f"{given or 'none'}"
            )
            what = (
                "dagster dev" if layout == "dev" else "the code server, dagster-webserver and dagster-daemon"
            )
            what += " and a Celery worker" if launcher == "celery" else ""
            log(f"starting {what} ({layout} layout, {launcher} run launcher) ...")
            started = time.perf_counter()
            servers.start()
            log(f"webserver and daemon up in {time.perf_counter() - started:.0f} s")

            others = {"bench (proxies, sampler, media server)": os.getpid()}
            if world.local_pds is not None:
                others["PDS"] = world.local_pds.process.pid
            proxies = (pds_proxy, storage_proxy)
            strict = pds_limits != "on"
            with ProcessSampler(token, servers.roots(), others) as sampler:
                full = servers.run_pass("full", keys, order, proxies, full_timeout_s, strict)
            full.update(sampler.report())
            if limited:  # what the pass left of the global window (none spent with the key)
                full["pds_limit_after"] = _probe_limits(pds_url)
            log(
                f"full pass: peak {full['peak_rss_mb']} MB {full['peak_breakdown_mb']}; CPU s {full['cpu_s']}"
            )

            log("counting the records on the PDS and reading them (listRecords, getBlob) ...")
            dids = [u.did for u in summary.users if u.did]
            prepared = {did: r for did, r in read_records(pds_url, dids, bypass_key=bypass_key).items() if r}
            records = sum(len(r) for r in prepared.values())
            log(
                f"{records} records on the PDS in {len(prepared)} accounts "
                f"({dataset['records_on_pds_total']} expected)"
            )

            with ProcessSampler(token, servers.roots(), others) as sampler:
                noop = servers.run_pass("no-op", keys, order, proxies, noop_timeout_s, strict)
            noop.update(sampler.report())
            if limited:
                noop["pds_limit_after"] = _probe_limits(pds_url)
            log(f"no-op pass: peak {noop['peak_rss_mb']} MB; CPU s {noop['cpu_s']}")
            problems = {name: _log_problems(path) for name, path in servers.logs().items()}
            strays = servers.stop()

            pds_pid = world.local_pds.process.pid if world.local_pds is not None else None
            ceiling = run_ceiling(pds_url, list(prepared.values()), log, pds_pid, bypass_key=bypass_key)
            del prepared
            storage_proxy.set_network(0.0)  # the derivation alone: no network
            derive = run_derive(db, work / "derive-cache", log)

            passes = {"full": full, "noop": noop}
            result = {
                "size": size,
                "layout": layout,
                "launcher": launcher,
                "rtt_ms": rtt,
                "bandwidth_mbit": bandwidth_mbit,
                "pds_limits": pds_limits,
                "pds_limits_probe": probe,
                "seeding_used_bypass_key": bypass_key is not None,
                "dagster_env": dagster_env,
                # in the environment of every process the bench started: what finds any left behind
                "process_marker": {MARKER: token},
                "platform_records": records,
                # the records MongoDB wants, and the platform's own KidLisp records MongoDB lacks (kept)
                "platform_records_expected": summary.records_on_pds_total,
                "platform_partitions": len(keys),
                "platform_full_s": full["wall_s"],
                "platform_noop_s": noop["wall_s"],
                "platform_noop_writes": sum(noop["writes"].values()),
                "platform_full_runs": full["runs"],
                "platform_noop_runs": noop["runs"],
                "platform_requests": {k: request_counts(p["requests"]) for k, p in passes.items()},
                "platform_requests_per_record": round(full["requests"]["pds_total"] / records, 3)
                if records
                else None,
                "platform_noop_pds_requests_per_account": round(
                    noop["requests"]["pds_total"] / max(1, len(order)), 2
                ),
                "platform_planned_events_per_run": {
                    k: p["planned_events_per_run"] for k, p in passes.items()
                },
                "platform_deferred_partitions": {k: p["deferred_partitions"] for k, p in passes.items()},
                "platform_floor_s": {k: p["floor_s"] for k, p in passes.items()},
                "platform_time_over_floor": {k: p["time_over_floor"] for k, p in passes.items()},
                "platform_ceiling_s": round(ceiling["s"], 2),
                "platform_ceiling_logins_s": round(ceiling["logins_s"], 2),
                "platform_ceiling_accounts": ceiling["accounts"],
                "platform_ceiling_workers": CEILING_WORKERS,
                "platform_ceiling_blob_mb": round(ceiling["blob_bytes"] / 1e6, 1),
                "platform_ceiling_cpu_s": round(ceiling["cpu_s"], 1),
                "platform_derive_s": round(derive["s"], 2),
                "platform_derive_cpu_s": round(derive["cpu_s"], 1),
                "platform_derive_items": derive["items"],
                "platform_peak_rss_mb": full["peak_rss_mb"],
                "platform_noop_peak_rss_mb": noop["peak_rss_mb"],
                "platform_full_writes": full["writes"],
                "passes": passes,
                "server_log_problems": {k: v[:20] for k, v in problems.items()},
                "stray_processes_killed": strays,
                "seed_s": round(seed_s, 1),
                "dataset": dataset,
                "machine": machine(),
                "code": _code_version(),
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "bench_s": round(time.perf_counter() - bench_started, 1),
            }
            log(format_platform_table(result))
            if json_path:
                Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
            failed = False
            return result
        finally:
            try:
                if failed:
                    kept = Path(tempfile.mkdtemp(prefix="acpipeline-bench-platform-logs-"))
                    logs = servers.logs() if servers is not None else {}
                    for path in logs.values():
                        with contextlib.suppress(OSError):
                            shutil.copy(path, kept / path.name)
                    log(f"the bench failed; the servers' logs are kept in {kept}")
                stack.close()  # every callback runs, even when one raises (or is interrupted)
            finally:
                os.environ.clear()
                os.environ.update(saved)
                shutil.rmtree(work, ignore_errors=True)
                if previous_sigterm is not None:
                    signal.signal(signal.SIGTERM, previous_sigterm)


def _code_version() -> dict[str, Any]:
    """The checkout's commit and the files changed in its working tree (measured with them)."""

    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                return done.stdout
        return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "changed": changed}


def _raise_on_sigterm() -> Any:
    """SIGTERM raises SystemExit in the main thread (so `finally` blocks run); returns the handler it
    replaced, or None off the main thread (where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(f"the platform bench was terminated (signal {signum})")

    previous = signal.signal(signal.SIGTERM, terminate)
    return signal.SIG_DFL if previous is None else previous


def _stop_servers(servers: Servers, log: Callable[[str], None]) -> None:
    strays = servers.stop()
    if strays:
        log(f"stopped {strays} processes of the bench's servers that outlived their process groups")


def _dataset(summary: DatasetSummary, order: list[str]) -> dict[str, Any]:
    counts = summary.counts
    with_account = summary.items_per_user.get("with_account", {}).get("items", {})
    people = summary.items_per_user.get("all", {}).get("items", {}).get("users")
    return {
        "size": summary.size,
        "users": people if people is not None else counts.get("users", 0),  # the art account not counted
        "accounts": len(order),  # registered handles: the users with an account, the art account included
        "documents": {
            name: counts.get(name, 0) for name in ("paintings", "moods", "pieces", "kidlisp", "tapes")
        },
        "records_expected": dict(summary.records_expected),
        "records_expected_total": summary.records_expected_total,
        "records_on_pds_total": summary.records_on_pds_total,  # with the platform's orphan KidLisp records
        "items_per_account": with_account,
    }


def format_platform_table(r: dict[str, Any]) -> str:
    """The figures as Markdown table rows: figure, value, ratio / target (✓ met, ✗ missed)."""
    full, noop, ceiling = r["platform_full_s"], r["platform_noop_s"], r["platform_ceiling_s"]
    ratio = ceiling / full if full else 0.0
    most_runs = max(r["platform_full_runs"], r["platform_noop_runs"])
    d = r["dataset"]
    documents = ", ".join(f"{n} {name}" for name, n in d["documents"].items())
    expected = ", ".join(f"{n} {name}" for name, n in d["records_expected"].items())
    rows = [
        (
            "dataset",
            f"{r.get('size', d['size'])}",
            f"{d['users']} users, {d['accounts']} accounts; {documents}",
        ),
        (
            "`platform_records`: records on the PDS after the full pass",
            r["platform_records"],
            f"{r['platform_records_expected']} expected ({expected})",
        ),
        ("`platform_partitions`: partitions in each backfill", r["platform_partitions"], ""),
        (
            "`platform_full_s`: backfill from an empty PDS, launch to COMPLETED",
            full,
            f"{r['platform_full_runs']} runs",
        ),
        (
            "`platform_noop_s`: the same backfill again, nothing changed",
            noop,
            f"{r['platform_noop_runs']} runs; no-op/full = {noop / full if full else 0:.2f}; "
            f"target ≤ {TARGETS['noop_s']:.0f} s {mark(noop <= TARGETS['noop_s'])}",
        ),
        (
            "`platform_noop_writes`: writes the PDS received in the no-op pass",
            r["platform_noop_writes"],
            f"target 0 {mark(r['platform_noop_writes'] == 0)}",
        ),
        (
            "runs per pass (full / no-op)",
            f"{r['platform_full_runs']} / {r['platform_noop_runs']}",
            f"target ≤ {TARGETS['runs_per_pass']} {mark(most_runs <= TARGETS['runs_per_pass'])}",
        ),
        (
            "run start, launch to RUN_START, p50 / p90 (full; no-op)",
            " / ".join(f"{r['passes']['full'].get(f'run_start_s_{p}', 0):.2f}" for p in ("p50", "p90")),
            " / ".join(f"{r['passes']['noop'].get(f'run_start_s_{p}', 0):.2f}" for p in ("p50", "p90"))
            + f" s; {r.get('launcher', 'default')} run launcher",
        ),
        (
            "`platform_ceiling_s`: same records and blobs, uploadBlob + applyWrites of 200, "
            f"{r.get('platform_ceiling_workers', CEILING_WORKERS)} accounts at a time",
            ceiling,
            f"ceiling/full = {ratio:.2f} (target ≥ {TARGETS['ceiling_ratio']}) "
            f"{mark(ratio >= TARGETS['ceiling_ratio'])}; one login per account would add "
            f"{r['platform_ceiling_logins_s']} s",
        ),
        (
            "`platform_derive_s`: the blob stage alone (thumbnails, tape MP4s), no Dagster, no PDS",
            r["platform_derive_s"],
            f"{r['platform_derive_items']} paintings and tapes, {r.get('platform_derive_cpu_s')} CPU s "
            f"(the ceiling's writes: {r.get('platform_ceiling_cpu_s')} CPU s, client and PDS); "
            f"(ceiling + derivation)/full = {(ceiling + r['platform_derive_s']) / full if full else 0:.2f}",
        ),
        (
            "`platform_peak_rss_mb`: webserver, daemon, code servers and runs, full pass (PSS)",
            r["platform_peak_rss_mb"],
            f"no-op pass {r['platform_noop_peak_rss_mb']}; target ≤ {TARGETS['peak_rss_mb']:.0f} "
            f"{mark(r['platform_peak_rss_mb'] <= TARGETS['peak_rss_mb'])}",
        ),
        *_request_rows(r),
        ("machine, date", r["machine"], r["date"]),
    ]
    return "\n".join(f"| {name} | {value} | {note} |" for name, value, note in rows)


def _short(method: str) -> str:
    return method.removeprefix("com.atproto.").removeprefix("storage:")


def _by_method(counts: dict[str, int]) -> str:
    return ", ".join(f"{_short(method)} {n}" for method, n in counts.items()) or "none"


def _request_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The rows of the setup, the requests, the planned events, the rate limit and the load (results
    written before they were measured have none)."""
    if "platform_requests" not in r:
        return []
    passes = r["passes"]
    network = f"{r.get('rtt_ms') or 0:g} ms round trip, {r.get('bandwidth_mbit') or 'unlimited'} Mbit/s"
    given = {k: v for k, v in r.get("dagster_env", {}).items() if v is not None}
    rows: list[tuple[str, Any, str]] = [
        (
            "layout, run launcher, network (PDS and storage), PDS rate limits",
            f"{r['layout']}; {r.get('launcher', 'default')}; {network}; limits {r['pds_limits']}",
            f"Dagster's settings given to the servers: {given or 'none'}",
        ),
    ]
    for key, label in (("full", "full"), ("noop", "no-op")):
        counts = r["platform_requests"][key]
        rows.append(
            (
                f"`platform_requests`, {label} pass: PDS + storage",
                f"{counts['pds_total']} + {counts['storage_total']}",
                f"PDS: {_by_method(counts['pds'])}; storage: {_by_method(counts['storage'])}",
            )
        )
    rows += [
        (
            "`platform_requests_per_record`: full pass's PDS requests per record on the PDS",
            r["platform_requests_per_record"],
            f"no-op pass: {r['platform_noop_pds_requests_per_account']} PDS requests per account",
        ),
    ]
    planned = r["platform_planned_events_per_run"]
    assets = len(SYNC_ASSETS)
    fast = all(p["max"] == assets for p in planned.values() if p["runs"])
    rows.append(
        (
            "`platform_planned_events_per_run`: ASSET_MATERIALIZATION_PLANNED per run, max (total)",
            " / ".join(f"{p['max']} ({p['total']})" for p in planned.values()),
            f"full / no-op; one per asset ({assets}) with nothing exported {mark(fast)}",
        )
    )
    floor, over = r["platform_floor_s"], r["platform_time_over_floor"]
    rows.append(
        (
            "`platform_floor_s`: the PDS's global limit (10 requests/s) on the pass's requests, full / no-op",
            f"{floor['full']} / {floor['noop']}",
            f"time/floor {over['full']} / {over['noop']}; deferred partitions "
            f"{r['platform_deferred_partitions']['full']} / {r['platform_deferred_partitions']['noop']}; "
            f"429s {passes['full']['requests']['pds_429']} / {passes['noop']['requests']['pds_429']}",
        )
    )
    rows.append(
        (
            "load average (1, 5, 15 min) before / after, full; no-op",
            f"{passes['full'].get('loadavg_before')} / {passes['full'].get('loadavg_after')}; "
            f"{passes['noop'].get('loadavg_before')} / {passes['noop'].get('loadavg_after')}",
            "others' work on the machine shows here",
        )
    )
    return rows


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"
