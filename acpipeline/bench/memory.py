"""Memory of the measured processes, cheap enough to sample often beside them.

A process's PSS comes from `/proc/PID/smaps_rollup`, for which the kernel walks the process's page tables:
a couple of milliseconds for a sync worker, CPU taken from the 2 cores the sync is measured on. Its RSS
(`statm`) costs next to nothing. So the PSS is read again only when the RSS moved, or the last read is old
(a fork or an exit elsewhere changes how pages are shared without moving this process's RSS)."""

from __future__ import annotations

import time

import psutil

RSS_STEP = 1_000_000  # bytes the RSS may move before the PSS is read again
MAX_AGE_S = 1.0  # the longest a PSS read stands


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
