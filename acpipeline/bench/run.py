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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from acpipeline.bench.counting_proxy import WRITE_METHODS, CountingProxy, Exchange, as_rows, summarize
from acpipeline.bench.memory import PssReader
from acpipeline.bench.strategies import PreparedRecord, write_ceiling, write_platform_style
from acpipeline.core.media import MEDIA

if TYPE_CHECKING:
    from acpipeline.demo.media_server import MediaServer
    from acpipeline.localpds.server import LocalPds
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


@dataclass
class _World:
    """The bench's servers, proxies and folders, and what each phase measured: `phases` the requests the
    proxies saw, `cpu` the CPU seconds spent meanwhile."""

    work: Path
    pds: LocalPds
    media: MediaServer
    client: PdsClient
    pds_proxy: CountingProxy
    media_proxy: CountingProxy
    env: dict[str, str] = field(default_factory=dict)
    phases: dict[str, tuple[float, list[Exchange]]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    peaks: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.work / "home"

    def phase(self, name: str, measure: Callable[[], _T]) -> _T:
        """`measure()`, the requests both proxies saw meanwhile kept as phase `name`, and the CPU seconds
        spent meanwhile by the syncs' process trees, the PDS and this process (proxies, media server,
        reference writers)."""
        self.pds_proxy.take()
        self.media_proxy.take()
        before = _cpu_seconds(self.pds.process.pid)
        started = time.perf_counter()
        result = measure()
        taken = self.pds_proxy.take() + self.media_proxy.take()
        self.phases[name] = (started, sorted(taken, key=lambda e: e.start))
        self.cpu[name] = {k: round(v - before[k], 2) for k, v in _cpu_seconds(self.pds.process.pid).items()}
        return result

    def sync(self, name: str, args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
        """An `acpipeline sync --json` as phase `name`: (wall seconds, peak MB, stdout)."""
        command = [sys.executable, "-m", "acpipeline.cli", "sync", "--json", *args]
        peaks = self.peaks.setdefault(name, {})
        return self.phase(name, lambda: run_measured(command, env, peaks))

    def stop(self) -> None:
        self.client.close()
        self.pds_proxy.stop()
        self.media_proxy.stop()
        self.media.stop()
        self.pds.stop()


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
    shaped = rtt_ms is not None or bandwidth_mbit is not None
    saved = dict(os.environ)
    world = _start_world(rtt_ms, bandwidth_mbit, log)
    try:
        heavy_did = _seed(world, size, log)
        # On loopback the syncs reach the PDS and the storage directly (the no-op ones through the counting
        # proxy); over a network, everything goes through the proxies.
        pds_url = world.pds_proxy.url if shaped else world.pds.url
        sync_env = dict(world.env, PDS_URL=pds_url)
        if shaped:
            log(f"network: {rtt_ms or 0} ms round trip, bandwidth {bandwidth_mbit or 'unlimited'} Mbit/s")
            for name, template in world.media.url_templates().items():
                sync_env[f"ACPIPELINE_{name.upper()}"] = template.replace(
                    world.media.url, world.media_proxy.url
                )
        result = _heavy_user_syncs(world, heavy_did, sync_env, log)
        result.update(_reference_writers(world, heavy_did, pds_url, log))
        log("tapes: the 32 anonymous tapes ...")
        _, rss_tapes, _ = world.sync("tapes", ["--handle", ART, "--tapes-only"], sync_env)
        video_s, encode_s, tapes = _tape_stage(ART)
        result.update(
            {
                "tape_realtime_factor": round(video_s / encode_s, 2) if encode_s else 0.0,
                "peak_rss_mb": round(max(result.pop("peak_rss_mb"), rss_tapes), 1),
                # Each sync's peak, and each process's share of it (the spread between runs: the README).
                "peak_rss_mb_by_sync": world.peaks,
                "cpu_s": world.cpu,
                "tapes": tapes,
                "tape_video_s": round(video_s, 2),
                "tape_encode_s": round(encode_s, 2),
                "rtt_ms": rtt_ms if shaped else None,
                "bandwidth_mbit": bandwidth_mbit,
                "machine": machine(),
            }
        )
        if shaped:
            result["requests"] = {name: summarize(ex, origin) for name, (origin, ex) in world.phases.items()}
        log(format_table(result))
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        if trace_path:
            trace = {name: as_rows(ex, origin) for name, (origin, ex) in world.phases.items()}
            Path(trace_path).write_text(json.dumps(trace) + "\n")
        return result
    finally:
        world.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(world.work, ignore_errors=True)


def _start_world(rtt_ms: float | None, bandwidth_mbit: float | None, log: Callable[[str], None]) -> _World:
    """A fresh PDS, media server, ACPIPELINE_HOME and DAGSTER_HOME (this process's environment points at
    them), and the counting proxies in front of the PDS and the media server."""
    from acpipeline.demo.media_server import MediaServer
    from acpipeline.localpds import server as localpds
    from acpipeline.resources.pds import PdsClient

    work = Path(tempfile.mkdtemp(prefix="acpipeline-bench-"))
    dagster_home = work / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ.update(ACPIPELINE_HOME=str(work / "home"), DAGSTER_HOME=str(dagster_home))
    os.environ.pop("MONGODB_CONNECTION_STRING", None)
    os.environ.pop("PDS_URL", None)
    pds = localpds.start(log=log)
    media = MediaServer(work / "media").start()
    world = _World(
        work,
        pds,
        media,
        PdsClient(pds.url),
        CountingProxy(pds.url, rtt_ms or 0.0, bandwidth_mbit, name="pds").start(),
        CountingProxy(media.url, rtt_ms or 0.0, bandwidth_mbit, name="storage").start(),
    )
    world.env = dict(os.environ, PDS_URL=pds.url)
    for name, template in media.url_templates().items():
        world.env[f"ACPIPELINE_{name.upper()}"] = template
    os.environ.update(world.env)
    return world


def _seed(world: _World, size: str, log: Callable[[str], None]) -> str:
    """The dataset in the embedded store and its accounts on the PDS; the heavy user's DID."""
    from acpipeline.demo.dataset import seed_dataset
    from acpipeline.resources.mongo import MongoResource

    tag = secrets.token_hex(3)
    mongo = MongoResource()
    log("seeding the bench dataset ...")
    summary = seed_dataset(
        mongo.db(),
        world.work / "media",
        lambda handle, password: world.client.create_account(handle, password, f"{handle}-{tag}@example.com"),
        size=size,
    )
    mongo.close()
    heavy = summary.user(HEAVY)
    if heavy.did is None:
        raise RuntimeError(f"the bench dataset made no PDS account for {HEAVY}")
    return heavy.did


def _heavy_user_syncs(
    world: _World, did: str, sync_env: dict[str, str], log: Callable[[str], None]
) -> dict[str, Any]:
    """The heavy user's full sync, then its no-op syncs (the default one, then `--full`) through the
    counting proxy, which counts their writes."""
    log("full sync of the heavy user through Dagster ...")
    full_s, rss_full, out = world.sync("full_sync", ["--handle", HEAVY], sync_env)
    rows = json.loads(out)["partitions"]
    if not all(r["ok"] for r in rows):
        raise RuntimeError(f"the full sync failed: {[r['error'] for r in rows if not r['ok']]}")
    records = sum(len(world.client.list_records(did, rules.nsid)) for rules in MEDIA.values())

    log("no-op syncs (through a counting proxy): the default one, then --full ...")
    noop_env = dict(sync_env, PDS_URL=world.pds_proxy.url)
    noop_s, rss_noop, noop_out = world.sync("noop_sync", ["--handle", HEAVY], noop_env)
    # Partitions the no-op sync ran, not proven converged from their marks: none, unless a mark was lost.
    noop_ran = [r["media"] for r in json.loads(noop_out)["partitions"] if not r["skipped"]]
    noop_full_s, rss_noop_full, _ = world.sync("noop_full", ["--handle", HEAVY, "--full"], noop_env)
    noop_writes = sum(
        e.method in WRITE_METHODS for name in ("noop_sync", "noop_full") for e in world.phases[name][1]
    )
    return {
        "records": records,
        "full_sync_s": round(full_s, 2),
        "noop_sync_s": round(noop_s, 2),
        "noop_writes": noop_writes,
        "noop_partitions_run": noop_ran,
        "noop_full_s": round(noop_full_s, 2),
        "peak_rss_mb": max(rss_full, rss_noop, rss_noop_full),
    }


def _reference_writers(world: _World, did: str, pds_url: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The heavy user's records, as the pipeline wrote them, written again to fresh accounts: the PDS's
    ceiling (one upload at a time, then overlapped) and the platform's own strategy."""
    tag = secrets.token_hex(3)
    prepared = _prepared(world.client, did, world.home)
    log(f"ceiling: {len(prepared)} records by uploadBlob + applyWrites of 200 ...")
    password = secrets.token_urlsafe(16)

    def account(name: str) -> str:
        return world.client.create_account(f"{name}-{tag}.test", password, f"{name}-{tag}@example.com")

    ceiling_did = account("ceiling")
    ceiling_s = world.phase("ceiling", lambda: write_ceiling(pds_url, ceiling_did, password, prepared))
    log(f"the same, {OVERLAPPED_UPLOADS} uploads at a time while the batch before commits ...")
    overlap_did = account("overlap")
    overlapped_s = world.phase(
        "ceiling_overlapped",
        lambda: write_ceiling(pds_url, overlap_did, password, prepared, OVERLAPPED_UPLOADS),
    )
    log("the platform's strategy: a login and a createRecord per record, 10 at a time ...")
    seed_did = account("seed")
    seed_s = world.phase("seed_strategy", lambda: write_platform_style(pds_url, seed_did, password, prepared))
    return {
        "ceiling_s": round(ceiling_s, 2),
        "ceiling_overlapped_s": round(overlapped_s, 2),
        "seed_strategy_s": round(seed_s, 2),
    }


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
