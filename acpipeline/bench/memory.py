"""Memory of the measured processes, cheap enough to sample often beside them.

A process's PSS comes from `/proc/PID/smaps_rollup`, for which the kernel walks the process's page tables:
a couple of milliseconds for a sync worker, CPU taken from the 2 cores the sync is measured on. Its RSS
(`statm`) costs next to nothing. So the PSS is read again only when the RSS moved, or the last read is old
(a fork or an exit elsewhere changes how pages are shared without moving this process's RSS).

`ProcessSampler` is the platform bench's memory figure: during each pass, the summed PSS of every process
of the bench's servers (the marked ones, found by their environment, and every descendant of those, runs
included); the PDS, the proxies and the bench itself are not counted. It reports the peak's breakdown by
kind of process and the CPU seconds each kind used (the PDS and the bench process too)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psutil

from acpipeline.bench.processes import _marked

RSS_STEP = 1_000_000  # bytes the RSS may move before the PSS is read again
MAX_AGE_S = 1.0  # the longest a PSS read stands
SAMPLE_INTERVAL_S = 0.25
DISCOVER_EVERY_S = 2.0  # the sampler reads every process's environment this often


class PssReader:
    """Each process's PSS, re-read when its RSS moved by more than `RSS_STEP` or the last read is older than
    `MAX_AGE_S`; else the last read."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, float], tuple[int, int, float]] = {}  # (pid, start) -> (rss, pss, at)
        self.reads = 0  # smaps_rollup reads made

    def pss(self, process: psutil.Process) -> int:
        """Raises psutil.Error for a process that is gone."""
        key = (process.pid, process.create_time())
        rss = process.memory_info().rss
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or abs(rss - last[0]) > RSS_STEP or now - last[2] > MAX_AGE_S:
            last = (rss, process.memory_full_info().pss, now)
            self._last[key] = last
            self.reads += 1
        return last[1]


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
