"""One call's attempts, for every client that retries (the PDS, media storage).

The caller decides what is worth another attempt and how long the next one waits (the PDS's rate-limit
throttle and its write-outcome-unknown rule stay with the PDS client); `Attempts` counts the attempts, keeps
what each one met for the final message, and sleeps before the next one only when it fits the budget: a
time from the first attempt, a number of attempts, or both.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator


def exponential(first_s: float, cap_s: float = math.inf, *, jitter: bool = False) -> Callable[[int], float]:
    """The wait after attempt n: `first_s`, doubling with each attempt, at most `cap_s`; with `jitter` each
    wait is scaled by 0.5 to 1.5 at random, so clients that failed together do not come back together."""

    def wait(attempt: int) -> float:
        base = min(cap_s, first_s * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random()) if jitter else base

    return wait


class Attempts:
    """Iterate for the attempts (1, 2, ...); after one that failed, `failed` says what it met. The next
    attempt follows the wait (the backoff, unless `failed` names one) when it fits the budget; otherwise the
    iteration ends and the caller raises its error. An attempt that neither failed nor ended the loop (a
    renewed token) is followed at once."""

    def __init__(
        self,
        backoff: Callable[[int], float],
        *,
        budget_s: float = math.inf,
        limit: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backoff = backoff
        self.deadline = time.monotonic() + budget_s
        self.limit = limit
        self.sleep = sleep
        self.count = 0
        self.tried: list[str] = []
        self._wait: float | None = None

    def __iter__(self) -> Iterator[int]:
        while True:
            self.count += 1
            self._wait = None
            yield self.count
            wait = self._wait
            if wait is None:
                continue
            if (
                self.limit is not None and self.count >= self.limit
            ) or time.monotonic() + wait > self.deadline:
                return
            if wait > 0:
                self.sleep(wait)

    def failed(self, outcome: str, wait: float | None = None) -> None:
        """The current attempt met `outcome`; the next one waits `wait` seconds (None: the backoff)."""
        self.tried.append(outcome)
        self._wait = self.backoff(self.count) if wait is None else wait

    def summary(self) -> str:
        """`HTTP 502 x3, ReadTimeout`: what the attempts met, repeats folded."""
        folded: list[tuple[str, int]] = []
        for outcome in self.tried:
            if folded and folded[-1][0] == outcome:
                folded[-1] = (outcome, folded[-1][1] + 1)
            else:
                folded.append((outcome, 1))
        return ", ".join(f"{o} x{n}" if n > 1 else o for o, n in folded)
