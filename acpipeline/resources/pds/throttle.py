"""The PDS's rate-limit throttle: a "not before" time per PDS host (or per account's writes), shared by every
client of that PDS in this process and, through a file under ACPIPELINE_HOME/throttle or a document in
MongoDB's `acpipeline-throttle`, with every other process. Also the reading of the PDS's rate-limit headers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pymongo.errors import DuplicateKeyError, PyMongoError

from acpipeline.resources import shared_state
from acpipeline.settings import acpipeline_home

# Below this share of `ratelimit-limit` left in the window, calls are spread over what remains of it.
PRESSURE_SHARE = 0.02
# With the throttle in MongoDB, a process reads the shared time at most this often (its own holds at once).
SHARED_THROTTLE_READ_S = 1.0


class Throttle:
    """A "not before" time for one PDS host, shared by every client in this process (a dict) and across
    processes: a file under ACPIPELINE_HOME/throttle, read before each call; or, with
    `ACPIPELINE_SHARED_STATE=mongodb`, a document in MongoDB read at most once a second (every machine's
    runs). Concurrent updates keep the later time; a lost race only loses one extension of an already-set
    pause (MongoDB's `$max` loses none)."""

    _local: dict[str, float] = {}
    _seen: dict[str, tuple[float, float]] = {}  # host -> (when read, monotonic; the shared time)
    _lock = threading.Lock()

    def __init__(self, url: str, account: str | None = None) -> None:
        """`account`: one account's writes only (the PDS counts write points per account), not the host."""
        host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self.host = host if account is None else f"{host}/{account}"
        self._name = hashlib.sha256(self.host.encode()).hexdigest()[:16] + ".json"

    def path(self) -> Path:
        # Looked up per call: ACPIPELINE_HOME is read from the environment, which may change between runs.
        return acpipeline_home() / "throttle" / self._name

    def _where(self) -> tuple[str, Path | None]:
        """The key of this process's copy, and the file that shares it (None: MongoDB shares it)."""
        if shared_state.in_mongodb():
            return f"mongodb:{self.host}", None
        path = self.path()
        return str(path), path

    def not_before(self) -> float:
        key, path = self._where()
        with self._lock:
            local = self._local.get(key, 0.0)
        return max(local, _read_not_before(path) if path else self._shared())

    def _shared(self) -> float:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(self.host)
        if seen is not None and now - seen[0] < SHARED_THROTTLE_READ_S:
            return seen[1]
        value = _read_shared_not_before(self.host)
        with self._lock:
            self._seen[self.host] = (now, value)
        return value

    def delay(self) -> float:
        """Seconds to wait before the next call to this PDS (0 when free to go)."""
        return max(0.0, self.not_before() - time.time())

    def hold(self, until: float) -> None:
        """No call to this PDS (or this account's writes) before `until` (epoch seconds), from any client."""
        key, path = self._where()
        if path is None:
            with self._lock:
                if until <= self._local.get(key, 0.0):
                    return
                self._local[key] = until
            _hold_shared(self.host, until)  # outside the lock: the other threads read `_local` meanwhile
            return
        with self._lock:
            if until <= self._local.get(key, 0.0):
                return
            self._local[key] = until
            if until <= _read_not_before(path):
                return
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"host": self.host, "not_before": until}))
            os.replace(tmp, path)

    def observe(self, response: httpx.Response) -> None:
        """Pace calls when the PDS says its allowance is nearly spent: spread the calls still allowed over
        the rest of the window (a 429 holds until the reset; see `rate_limit_wait`)."""
        remaining = _header_float(response, "ratelimit-remaining")
        reset = _reset_time(response)
        if remaining is None or reset is None:
            return
        limit = _header_float(response, "ratelimit-limit") or 0.0
        if remaining > max(1.0, limit * PRESSURE_SHARE):
            return
        now = time.time()
        self.hold(now + max(0.0, reset - now) / (remaining + 1))


@dataclass(frozen=True)
class RateLimitStatus:
    """The `ratelimit-*` headers of one answer: the tightest limit that counted the call (for most calls
    the PDS's per-IP one). `window_s` from `ratelimit-policy` (`3000;w=300`), None when it does not say."""

    limit: int
    remaining: int
    reset: float  # epoch seconds; 0 when not given
    window_s: float | None


def rate_limit_status(headers: Mapping[str, str]) -> RateLimitStatus | None:
    """What the headers say (`httpx.Headers` ignores their case), or None when they carry no limit: the
    PDS does not limit the call, or did not count it (a call carrying the bypass key)."""
    limit, remaining = _number(headers.get("ratelimit-limit")), _number(headers.get("ratelimit-remaining"))
    if limit is None or remaining is None:
        return None
    policy = dict(part.strip().partition("=")[::2] for part in headers.get("ratelimit-policy", "").split(";"))
    return RateLimitStatus(
        int(limit), int(remaining), _number(headers.get("ratelimit-reset")) or 0.0, _number(policy.get("w"))
    )


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def rate_limit_wait(response: httpx.Response) -> float:
    """Seconds until the PDS accepts calls again: `retry-after` (seconds or an HTTP date), else
    `ratelimit-reset`, else a second or two."""
    retry_after = response.headers.get("retry-after", "").strip()
    if retry_after:
        try:
            return max(0.25, float(retry_after)) + random.random() * 0.5
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time()) + 0.5
            except (TypeError, ValueError):
                pass
    reset = _reset_time(response)
    if reset is not None:
        return max(0.5, reset - time.time()) + random.random() * 0.5
    return 1.0 + random.random()


def _read_not_before(path: Path) -> float:
    try:
        return float(json.loads(path.read_text())["not_before"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _read_shared_not_before(host: str) -> float:
    """The shared time in MongoDB; 0 when there is none or MongoDB does not answer (the throttle is advice:
    a PDS that is really under pressure says so again with its next answer)."""
    try:
        found = shared_state.collection(shared_state.THROTTLE).find_one({"_id": host})
        return float(found["not_before"]) if found else 0.0
    except (PyMongoError, ValueError, KeyError, TypeError):
        return 0.0


def _hold_shared(host: str, until: float) -> None:
    """The later of the stored time and `until`, in one atomic update (`$max`)."""
    throttle = shared_state.collection(shared_state.THROTTLE)
    for _ in range(2):  # two first upserts at once: one of them meets the other's document
        try:
            throttle.update_one({"_id": host}, {"$max": {"not_before": until}}, upsert=True)
            return
        except DuplicateKeyError:
            continue
        except PyMongoError:
            return  # this process still waits; the others learn it from the PDS


def _header_float(response: httpx.Response, name: str) -> float | None:
    try:
        return float(response.headers[name])
    except (KeyError, ValueError):
        return None


def _reset_time(response: httpx.Response) -> float | None:
    """`ratelimit-reset` as epoch seconds (the PDS sends epoch seconds; small values are read as a delay)."""
    reset = _header_float(response, "ratelimit-reset")
    if reset is None:
        return None
    return reset if reset > 1e9 else time.time() + reset
