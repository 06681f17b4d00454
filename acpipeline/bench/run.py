"""The benchmark: one fresh local PDS, the `bench` dataset, every figure measured in the same run.

Method: the pipeline's syncs run as `acpipeline sync` subprocesses (exactly what an operator runs, Dagster
included), timed by wall clock, their process tree's resident memory sampled every 100 ms. The no-op run
goes through a counting proxy, so its writes are counted on the PDS's side. The two reference writers get
the records the pipeline produced (same values, same thumbnails) and write them to fresh accounts. With
`--rtt`/`--bandwidth`, every one of them reaches the PDS and the media storage through proxies that put
that network in between (`counting_proxy`: half the round trip each way, one more for a new connection).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from acpipeline.bench.counting_proxy import WRITE_METHODS, CountingProxy, Exchange, as_rows, summarize
from acpipeline.bench.memory import PssReader
from acpipeline.bench.strategies import PreparedRecord, write_ceiling, write_platform_style
from acpipeline.core.media import MEDIA

if TYPE_CHECKING:
    from acpipeline.resources.pds import PdsClient

HEAVY = "jeffrey.at.aesthetic.computer"
ART = "art.at.aesthetic.computer"
KEYS = (
    "records",
    "full_sync_s",
    "noop_sync_s",
    "noop_writes",
    "ceiling_s",
    "seed_strategy_s",
    "tape_realtime_factor",
    "peak_rss_mb",
)
_T = TypeVar("_T")
OVERLAPPED_UPLOADS = 32  # the sync's own connection limit to the PDS
NETWORK_KEYS = ("rtt_ms", "bandwidth_mbit", "requests")  # with --rtt or --bandwidth
# The memory sampler's period: it shares the 2 cores with the sync it measures (see bench/memory.py).
SAMPLE_EVERY_S = 0.1


def tree_memory_by_process(root: psutil.Process, reader: PssReader) -> dict[str, int]:
    """Each process's PSS in the tree, by `pid name` (the root, its forked workers, ffmpeg). Their sum is the
    tree's resident bytes with the pages its processes share (the forked partition workers share most of
    theirs with their parent) counted once."""
    found: dict[str, int] = {}
    with contextlib.suppress(psutil.Error):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                found[f"{process.pid} {process.name()}"] = reader.pss(process)
    return found


def run_measured(
    args: list[str], env: dict[str, str], at_peak: dict[str, float] | None = None
) -> tuple[float, float, str]:
    """(wall seconds, peak resident MB of the process tree, stdout) of a command; `at_peak` gets each
    process's MB at that peak and when it came (`seconds`)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root, reader = psutil.Process(process.pid), PssReader()
        while not done.is_set():
            sizes = tree_memory_by_process(root, reader)
            if sum(sizes.values()) > peak:
                peak = sum(sizes.values())
                if at_peak is not None:
                    at_peak.clear()
                    at_peak.update({name: round(size / 1e6, 1) for name, size in sizes.items()})
                    at_peak["seconds"] = round(time.perf_counter() - started, 2)
            time.sleep(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args[2:])} exited {process.returncode}: {err.strip()[-2000:]}")
    return elapsed, peak / 1e6, out


def _cpu_seconds(pds_pid: int) -> dict[str, float]:
    """CPU seconds so far: of the ended children (each sync, with the workers and ffmpeg it waited for),
    of the PDS, and of this process."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    try:
        times = psutil.Process(pds_pid).cpu_times()
        pds = times.user + times.system
    except psutil.Error:
        pds = 0.0
    return {
        "syncs": children.ru_utime + children.ru_stime,
        "pds": pds,
        "bench": me.ru_utime + me.ru_stime,
    }


def _prepared(client: PdsClient, did: str, home: Path) -> list[PreparedRecord]:
    """The account's records as the pipeline wrote them, with their blobs' bytes from the blob cache."""
    out: list[PreparedRecord] = []
    for rules in MEDIA.values():
        for record in client.list_records(did, rules.nsid):
            value = record["value"]
            blobs = tuple(
                ((home / "blobs" / value[name]["ref"]["$link"]).read_bytes(), value[name]["mimeType"])
                for name in rules.blob_fields
                if name in value
            )
            out.append(PreparedRecord(rules.nsid, record["uri"].rsplit("/", 1)[-1], value, blobs))
    return out


def _tape_stage(handle: str) -> tuple[float, float, int]:
    """(video seconds, wall seconds of the blob stage, tapes encoded) from the last `media_blobs`
    materialization of the handle's tape partition: encodes run in parallel, so wall time is what counts."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(AssetKey("media_blobs"), limit=50).records
    for record in records:
        materialization = record.asset_materialization
        if materialization and materialization.partition == f"{handle}|tape":
            meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
            derived = int(meta["derived_in_run"])
            return float(meta.get("video_seconds", 0.0)), float(meta["seconds_in_run"]), derived
    raise RuntimeError(f"no tape blob stage was recorded for {handle}")


def run_bench(
    json_path: str | None = None,
    size: str = "bench",
    log: Callable[[str], None] = print,
    rtt_ms: float | None = None,
    bandwidth_mbit: float | None = None,
    trace_path: str | None = None,
) -> dict[str, Any]:
    """Every figure of the benchmark; `size="small"` runs the same steps on the demo data (smoke test).

    With `rtt_ms` or `bandwidth_mbit`, every figure (syncs, ceiling, strategy, tapes) goes through a proxy
    in front of the PDS and one in front of the media storage that put that network between them and
    their clients, and `requests` reports where each phase's requests spent their time (`trace_path`:
    every request, for a closer look)."""
    from acpipeline.demo.dataset import seed_dataset
    from acpipeline.demo.media_server import MediaServer
    from acpipeline.localpds import server as localpds
    from acpipeline.resources.mongo import MongoResource
    from acpipeline.resources.pds import PdsClient

    shaped = rtt_ms is not None or bandwidth_mbit is not None
    work = Path(tempfile.mkdtemp(prefix="acpipeline-bench-"))
    home, dagster_home = work / "home", work / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", dagster_home / "dagster.yaml")
    saved = dict(os.environ)
    os.environ.update(ACPIPELINE_HOME=str(home), DAGSTER_HOME=str(dagster_home))
    os.environ.pop("MONGODB_CONNECTION_STRING", None)
    os.environ.pop("PDS_URL", None)
    pds = localpds.start(log=log)
    media = MediaServer(work / "media").start()
    client = PdsClient(pds.url)
    pds_proxy = CountingProxy(pds.url, rtt_ms or 0.0, bandwidth_mbit, name="pds").start()
    media_proxy = CountingProxy(media.url, rtt_ms or 0.0, bandwidth_mbit, name="storage").start()
    phases: dict[str, tuple[float, list[Exchange]]] = {}
    cpu: dict[str, dict[str, float]] = {}

    def phase(name: str, measure: Callable[[], _T]) -> _T:
        """`measure()`, the requests both proxies saw meanwhile kept as phase `name`, and the CPU seconds
        spent meanwhile by the syncs' process trees, the PDS and this process (proxies, media server,
        reference writers)."""
        pds_proxy.take()
        media_proxy.take()
        before = _cpu_seconds(pds.process.pid)
        started = time.perf_counter()
        result = measure()
        phases[name] = (started, sorted(pds_proxy.take() + media_proxy.take(), key=lambda e: e.start))
        cpu[name] = {k: round(v - before[k], 2) for k, v in _cpu_seconds(pds.process.pid).items()}
        return result

    try:
        env = dict(os.environ, PDS_URL=pds.url)
        for name, template in media.url_templates().items():
            env[f"ACPIPELINE_{name.upper()}"] = template
        os.environ.update(env)
        tag = secrets.token_hex(3)
        mongo = MongoResource()
        log("seeding the bench dataset ...")
        summary = seed_dataset(
            mongo.db(),
            work / "media",
            lambda handle, password: client.create_account(handle, password, f"{handle}-{tag}@example.com"),
            size=size,
        )
        mongo.close()
        heavy = summary.user(HEAVY)
        if heavy.did is None:
            raise RuntimeError(f"the bench dataset made no PDS account for {HEAVY}")
        sync = [sys.executable, "-m", "acpipeline.cli", "sync", "--json"]
        # On loopback the syncs reach the PDS and the storage directly (the no-op ones through the counting
        # proxy); over a network, everything goes through the proxies.
        pds_url = pds_proxy.url if shaped else pds.url
        sync_env = dict(env, PDS_URL=pds_url)
        if shaped:
            log(f"network: {rtt_ms or 0} ms round trip, bandwidth {bandwidth_mbit or 'unlimited'} Mbit/s")
            for name, template in media.url_templates().items():
                sync_env[f"ACPIPELINE_{name.upper()}"] = template.replace(media.url, media_proxy.url)

        log("full sync of the heavy user through Dagster ...")
        syncs = ("full_sync", "noop_sync", "noop_full", "tapes")
        peaks: dict[str, dict[str, float]] = {name: {} for name in syncs}
        full_s, rss_full, out = phase(
            "full_sync", lambda: run_measured([*sync, "--handle", HEAVY], sync_env, peaks["full_sync"])
        )
        rows = json.loads(out)["partitions"]
        if not all(r["ok"] for r in rows):
            raise RuntimeError(f"the full sync failed: {[r['error'] for r in rows if not r['ok']]}")
        records = sum(len(client.list_records(heavy.did, rules.nsid)) for rules in MEDIA.values())

        log("no-op syncs (through a counting proxy): the default one, then --full ...")
        noop_env = dict(sync_env, PDS_URL=pds_proxy.url)
        noop_s, rss_noop, noop_out = phase(
            "noop_sync", lambda: run_measured([*sync, "--handle", HEAVY], noop_env, peaks["noop_sync"])
        )
        # Partitions the no-op sync ran, not proven converged from their marks: none, unless a mark was lost.
        noop_ran = [f"{r['media']}" for r in json.loads(noop_out)["partitions"] if not r["skipped"]]
        noop_full_s, rss_noop_full, _ = phase(
            "noop_full",
            lambda: run_measured([*sync, "--handle", HEAVY, "--full"], noop_env, peaks["noop_full"]),
        )
        noop_writes = sum(
            e.method in WRITE_METHODS for name in ("noop_sync", "noop_full") for e in phases[name][1]
        )

        prepared = _prepared(client, heavy.did, home)
        log(f"ceiling: {len(prepared)} records by uploadBlob + applyWrites of 200 ...")
        password = secrets.token_urlsafe(16)
        did = client.create_account(f"ceiling-{tag}.test", password, f"ceiling-{tag}@example.com")
        ceiling_s = phase("ceiling", lambda: write_ceiling(pds_url, did, password, prepared))
        log(f"the same, {OVERLAPPED_UPLOADS} uploads at a time while the batch before commits ...")
        did = client.create_account(f"overlap-{tag}.test", password, f"overlap-{tag}@example.com")
        overlapped_s = phase(
            "ceiling_overlapped", lambda: write_ceiling(pds_url, did, password, prepared, OVERLAPPED_UPLOADS)
        )
        log("the platform's strategy: a login and a createRecord per record, 10 at a time ...")
        did = client.create_account(f"seed-{tag}.test", password, f"seed-{tag}@example.com")
        seed_s = phase("seed_strategy", lambda: write_platform_style(pds_url, did, password, prepared))

        log("tapes: the 32 anonymous tapes ...")
        _, rss_tapes, _ = phase(
            "tapes", lambda: run_measured([*sync, "--handle", ART, "--tapes-only"], sync_env, peaks["tapes"])
        )
        video_s, encode_s, tapes = _tape_stage(ART)

        result: dict[str, Any] = {
            "records": records,
            "full_sync_s": round(full_s, 2),
            "noop_sync_s": round(noop_s, 2),
            "noop_writes": noop_writes,
            "noop_partitions_run": noop_ran,
            "noop_full_s": round(noop_full_s, 2),
            "ceiling_s": round(ceiling_s, 2),
            "ceiling_overlapped_s": round(overlapped_s, 2),
            "seed_strategy_s": round(seed_s, 2),
            "tape_realtime_factor": round(video_s / encode_s, 2) if encode_s else 0.0,
            "peak_rss_mb": round(max(rss_full, rss_noop, rss_noop_full, rss_tapes), 1),
            # Each sync's peak, and each process's share of it (the variance between runs: see the README).
            "peak_rss_mb_by_sync": peaks,
            "cpu_s": cpu,
            "tapes": tapes,
            "tape_video_s": round(video_s, 2),
            "tape_encode_s": round(encode_s, 2),
            "rtt_ms": rtt_ms if shaped else None,
            "bandwidth_mbit": bandwidth_mbit,
            "machine": machine(),
        }
        if shaped:
            result["requests"] = {name: summarize(ex, origin) for name, (origin, ex) in phases.items()}
        log(format_table(result))
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        if trace_path:
            trace = {name: as_rows(ex, origin) for name, (origin, ex) in phases.items()}
            Path(trace_path).write_text(json.dumps(trace) + "\n")
        return result
    finally:
        client.close()
        pds_proxy.stop()
        media_proxy.stop()
        media.stop()
        pds.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {python}"


def format_table(r: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    network = "loopback"
    if r.get("rtt_ms") is not None or r.get("bandwidth_mbit"):
        network = f"{r.get('rtt_ms') or 0} ms round trip, {r.get('bandwidth_mbit') or 'unlimited'} Mbit/s"
    rows = [
        ("network (PDS and storage)", network, ""),
        ("records (heavy user)", r["records"], ""),
        ("full sync (s)", r["full_sync_s"], ""),
        (
            "no-op sync (s)",
            r["noop_sync_s"],
            f"noop/full = {ratio(r['noop_sync_s'], r['full_sync_s'])} (target <= 0.2)",
        ),
        (
            "no-op sync: partitions run",
            ", ".join(r["noop_partitions_run"]) or "none",
            "the rest proven converged by their marks; target none",
        ),
        ("no-op sync, --full (s)", r["noop_full_s"], "every partition run and its PDS listed again"),
        ("no-op writes", r["noop_writes"], "both no-op syncs, counted at the PDS; target 0"),
        (
            "PDS ceiling (s)",
            r["ceiling_s"],
            f"ceiling/full = {ratio(r['ceiling_s'], r['full_sync_s'])} (target >= 0.5)",
        ),
        (
            "ceiling, overlapped (s)",
            r["ceiling_overlapped_s"],
            f"{OVERLAPPED_UPLOADS} uploads at a time, during the commit before; "
            f"/full = {ratio(r['ceiling_overlapped_s'], r['full_sync_s'])}",
        ),
        (
            "platform strategy (s)",
            r["seed_strategy_s"],
            f"strategy/full = {ratio(r['seed_strategy_s'], r['full_sync_s'])} (target >= 10)",
        ),
        ("tape encode x real time", r["tape_realtime_factor"], f"{r['tapes']} tapes, target >= 5"),
        ("peak RSS (MB)", r["peak_rss_mb"], "target <= 500"),
    ]
    return "\n".join(f"| {name} | {value} | {note} |" for name, value, note in rows)
