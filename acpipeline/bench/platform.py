"""The platform benchmark: the platform-size dataset synced through Dagster as an operator runs it.

Method, step by step (each module's docstring has its part; the README's "The platform through the daemon"
has the figures):
- the stage (`stage`): a fresh PDS, media server and homes in a temporary folder, the proxies that put the
  network between the servers' runs and both, the dataset seeded;
- the servers (`servers`) in one layout, with one run launcher;
- two passes (`backfill_pass`), the full one from an empty PDS and the no-op one, each with its runs
  (`dagster_runs`), its requests and the PDS's rate limits (`platform_requests`), and the memory and CPU
  of the servers' processes (`memory.ProcessSampler`);
- the records read back after the full pass; after the servers stopped, the ceiling and the derivation
  alone (`ceiling`);
- the result (`KEYS` among its keys) and its table (`platform_table`).

Nothing exported: the servers get this process's environment without Dagster's settings for range runs
(`acpipeline.settings.DAGSTER_ENV`, removed even when this process has them, as the CLI sets them), unless
`extra_env` sets them; the project's entry points set them themselves (`apply_dagster_env`: the event log
storage, the code location). `dagster_env` in the result is what the servers were given (null: not in
their environment). The servers run with `ACPIPELINE_AUTOMATION=stopped` (sensor and schedule stay off)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from acpipeline.bench.backfill_pass import run_pass
from acpipeline.bench.ceiling import CEILING_WORKERS, read_records, run_ceiling, run_derive
from acpipeline.bench.memory import ProcessSampler
from acpipeline.bench.platform_requests import _probe_limits, request_counts
from acpipeline.bench.platform_table import format_platform_table
from acpipeline.bench.processes import MARKER, PROJECT
from acpipeline.bench.run import machine
from acpipeline.bench.servers import Servers, _check_layout, _log_problems
from acpipeline.bench.stage import (
    BenchOptions,
    Seeded,
    Stage,
    isolate_environment,
    seed_stage,
    start_stage,
    work_folder,
)
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV
from acpipeline.settings import DAGSTER_ENV

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
FULL_TIMEOUT_S = 3 * 3600.0
NOOP_TIMEOUT_S = 1800.0
PDS_LIMITS = ("off", "bypass", "on")


@dataclass(frozen=True)
class Measurements:
    """What the passes, the ceiling and the derivation alone measured."""

    full: dict[str, Any]
    noop: dict[str, Any]
    records: int  # on the PDS after the full pass
    ceiling: dict[str, Any]
    derive: dict[str, Any]
    problems: dict[str, list[str]]  # the servers' log lines that report an error, by server
    strays: int  # processes of the servers that outlived their process groups


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
    bench_started = time.perf_counter()
    limited = pds_limits != "off"
    bypass_key = secrets.token_urlsafe(24) if limited else None  # the seeding's, and `bypass` mode's
    rtt = float(rtt_ms or 0.0)
    options = BenchOptions(
        size, layout, launcher, pds_limits, rtt, bandwidth_mbit, extra_env or {}, bypass_key
    )
    work = work_folder(launcher)
    saved = isolate_environment(work)
    failed = True
    servers: Servers | None = None
    # A SIGTERM (a `timeout`, a CI runner) ends the bench through its cleanup like Ctrl-C does, instead of
    # leaving the PDS, the webserver and the daemon running in their own sessions.
    previous_sigterm = _raise_on_sigterm()
    with contextlib.ExitStack() as stack:
        try:
            stage = start_stage(stack, work, options, log)
            seeded = seed_stage(stack, stage, options, log)
            servers = _servers(stack, work, stage, seeded, options, log)
            _start_servers(servers, log)
            measured = _measure(servers, stage, seeded, options, (full_timeout_s, noop_timeout_s), log)
            result = _result(options, stage, seeded, servers, measured, bench_started)
            log(format_platform_table(result))
            if json_path:
                Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
            failed = False
            return result
        finally:
            try:
                if failed:
                    _keep_logs(servers, log)
                stack.close()  # every callback runs, even when one raises (or is interrupted)
            finally:
                _restore(saved, work, previous_sigterm)


def _servers(
    stack: ExitStack,
    work: Path,
    stage: Stage,
    seeded: Seeded,
    options: BenchOptions,
    log: Callable[[str], None],
) -> Servers:
    """The servers, not started yet, with their environment (see the module), stopped by `stack`."""
    # Nothing of Dagster's settings exported: the servers must set them themselves.
    token = secrets.token_hex(8)
    env = {name: value for name, value in os.environ.items() if name not in DAGSTER_ENV}
    env.update(
        stage.through_proxy, PDS_URL=stage.pds_proxy.url, ACPIPELINE_AUTOMATION="stopped", **{MARKER: token}
    )
    if options.pds_limits == "bypass" and options.bypass_key:
        env[RATELIMIT_BYPASS_ENV] = options.bypass_key
    env.update(options.extra_env)
    servers = Servers(
        work, env, token, seeded.instance, log, layout=options.layout, launcher=options.launcher
    )
    stack.callback(_stop_servers, servers, log)
    given = {name: value for name, value in _dagster_env(servers, options).items() if value is not None}
    bandwidth = options.bandwidth_mbit or "unlimited"
    log(
        f"network: {options.rtt_ms:g} ms round trip, bandwidth {bandwidth} Mbit/s (PDS and storage); PDS "
        f"rate limits {options.pds_limits}; Dagster's settings given to the servers: {given or 'none'}"
    )
    return servers


def _dagster_env(servers: Servers, options: BenchOptions) -> dict[str, str | None]:
    """Dagster's settings for range runs and `extra_env`'s variables as the servers got them (None: not in
    their environment)."""
    return {name: servers.env.get(name) for name in sorted({*DAGSTER_ENV, *options.extra_env})}


def _start_servers(servers: Servers, log: Callable[[str], None]) -> None:
    what = (
        "dagster dev" if servers.layout == "dev" else "the code server, dagster-webserver and dagster-daemon"
    )
    what += " and a Celery worker" if servers.launcher == "celery" else ""
    log(f"starting {what} ({servers.layout} layout, {servers.launcher} run launcher) ...")
    started = time.perf_counter()
    servers.start()
    log(f"webserver and daemon up in {time.perf_counter() - started:.0f} s")


def _measure(
    servers: Servers,
    stage: Stage,
    seeded: Seeded,
    options: BenchOptions,
    timeouts_s: tuple[float, float],
    log: Callable[[str], None],
) -> Measurements:
    """The full pass, the records read back, the no-op pass; then, the servers stopped, the ceiling and
    the derivation alone."""
    full_timeout_s, noop_timeout_s = timeouts_s
    full = _sampled_pass(servers, stage, seeded, options, "full", full_timeout_s)
    log(f"full pass: peak {full['peak_rss_mb']} MB {full['peak_breakdown_mb']}; CPU s {full['cpu_s']}")

    log("counting the records on the PDS and reading them (listRecords, getBlob) ...")
    dids = [u.did for u in seeded.summary.users if u.did]
    prepared = {
        did: r for did, r in read_records(stage.pds_url, dids, bypass_key=options.bypass_key).items() if r
    }
    records = sum(len(r) for r in prepared.values())
    log(
        f"{records} records on the PDS in {len(prepared)} accounts "
        f"({seeded.dataset['records_on_pds_total']} expected)"
    )

    noop = _sampled_pass(servers, stage, seeded, options, "no-op", noop_timeout_s)
    log(f"no-op pass: peak {noop['peak_rss_mb']} MB; CPU s {noop['cpu_s']}")
    problems = {name: _log_problems(path) for name, path in servers.logs().items()}
    strays = servers.stop()

    ceiling = run_ceiling(
        stage.pds_url, list(prepared.values()), log, stage.pds_pid, bypass_key=options.bypass_key
    )
    del prepared
    stage.storage_proxy.set_network(0.0)  # the derivation alone: no network
    derive = run_derive(stage.db, servers.work / "derive-cache", log)
    return Measurements(full, noop, records, ceiling, derive, problems, strays)


def _sampled_pass(
    servers: Servers, stage: Stage, seeded: Seeded, options: BenchOptions, label: str, timeout_s: float
) -> dict[str, Any]:
    """One pass with the memory and CPU of the servers' processes (and the PDS's and this process's CPU)
    sampled meanwhile; with the PDS's limits on, what the pass left of the global window (none spent with
    the key). With `pds_limits` "on", failed runs are reported, not raised."""
    others = {"bench (proxies, sampler, media server)": os.getpid()}
    if stage.pds_pid is not None:
        others["PDS"] = stage.pds_pid
    proxies = (stage.pds_proxy, stage.storage_proxy)
    strict = options.pds_limits != "on"
    with ProcessSampler(servers.token, servers.roots(), others) as sampler:
        details = run_pass(servers, label, seeded.keys, seeded.order, proxies, timeout_s, strict)
    details.update(sampler.report())
    if options.limited:
        details["pds_limit_after"] = _probe_limits(stage.pds_url)
    return details


def _result(
    options: BenchOptions,
    stage: Stage,
    seeded: Seeded,
    servers: Servers,
    measured: Measurements,
    bench_started: float,
) -> dict[str, Any]:
    """Every figure of the run, `KEYS` among them."""
    full, noop, records = measured.full, measured.noop, measured.records
    ceiling, derive = measured.ceiling, measured.derive
    passes = {"full": full, "noop": noop}
    return {
        "size": options.size,
        "layout": options.layout,
        "launcher": options.launcher,
        "rtt_ms": options.rtt_ms,
        "bandwidth_mbit": options.bandwidth_mbit,
        "pds_limits": options.pds_limits,
        "pds_limits_probe": stage.probe,
        "seeding_used_bypass_key": options.bypass_key is not None,
        "dagster_env": _dagster_env(servers, options),
        # in the environment of every process the bench started: what finds any left behind
        "process_marker": {MARKER: servers.token},
        "platform_records": records,
        # the records MongoDB wants, and the platform's own KidLisp records MongoDB lacks (kept)
        "platform_records_expected": seeded.summary.records_on_pds_total,
        "platform_partitions": len(seeded.keys),
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
            noop["requests"]["pds_total"] / max(1, len(seeded.order)), 2
        ),
        "platform_planned_events_per_run": {k: p["planned_events_per_run"] for k, p in passes.items()},
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
        "server_log_problems": {k: v[:20] for k, v in measured.problems.items()},
        "stray_processes_killed": measured.strays,
        "seed_s": round(seeded.seed_s, 1),
        "dataset": seeded.dataset,
        "machine": machine(),
        "code": _code_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bench_s": round(time.perf_counter() - bench_started, 1),
    }


def _keep_logs(servers: Servers | None, log: Callable[[str], None]) -> None:
    """The servers' logs copied to a folder of their own, which the bench's cleanup leaves."""
    kept = Path(tempfile.mkdtemp(prefix="acpipeline-bench-platform-logs-"))
    logs = servers.logs() if servers is not None else {}
    for path in logs.values():
        with contextlib.suppress(OSError):
            shutil.copy(path, kept / path.name)
    log(f"the bench failed; the servers' logs are kept in {kept}")


def _restore(saved: dict[str, str], work: Path, previous_sigterm: Any) -> None:
    """This process's environment and SIGTERM handler as before the bench, its temporary folder gone."""
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
