"""Test stand-ins that misbehave on purpose, always in front of something real.

`FaultProxy` sits in front of the REAL reference PDS and forwards every request to it, except a configured
share (or a scripted list) it answers with a fault instead: 429 with `ratelimit-*` and `retry-after`
headers, 500, 502, a dropped connection, a stall; or that it forwards first and then answers with a fault
(`*_after`: the PDS applied the write but the client never hears so, the nasty case for applyWrites).
Hooks see every request before and after forwarding (the crash tests kill the sync process from one).

`WriteLimiter` answers like the PDS's own write rate limit: points per window for `applyWrites` (a create
costs 3, an update 2, a delete 1, as Bluesky's hosted PDS counts them), `ratelimit-*` headers on every
write, and 429 RateLimitExceeded once a batch would go over, until the window resets.

`StubStorage` serves a media folder like the demo's media server, except for paths given a behaviour:
500, a stall, a trickle of bytes, or a redirect; it records every path asked for.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from acpipeline.bench.proxying import ProxyServer, end_to_end, read_body

BEFORE = ("429", "500", "502", "drop", "reset", "stall", "200_unsent")
AFTER = ("500_after", "502_after", "drop_after")
KINDS = BEFORE + AFTER
DECODED = ("content-encoding",)  # httpx hands the proxy bodies already decoded


@dataclass(frozen=True)
class Rule:
    """Answer `share` of the requests (of `nsids`, or of all) with fault `kind`."""

    kind: str
    share: float
    nsids: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}: choose from {KINDS}")

    def applies(self, nsid: str) -> bool:
        return self.nsids is None or nsid in self.nsids


@dataclass(frozen=True)
class Seen:
    """A request as a hook sees it: the XRPC method, its number among requests of that method (from 1),
    the phase ("before" forwarding, "after" the PDS answered) and the request body."""

    nsid: str
    n: int
    phase: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Hook = Callable[[Seen], "str | None"]  # may return a fault kind to inject right now

WRITE_POINTS = {"create": 3, "update": 2, "delete": 1}


class WriteLimiter:
    """`points` per `window_s` for applyWrites, like the PDS's limiter (a window starts with its first
    write); `refused` counts the 429s it answered."""

    def __init__(self, points: int, window_s: float):
        self.points, self.window_s = points, window_s
        self.used = 0
        self.window_start: float | None = None
        self.refused = 0
        self._lock = threading.Lock()

    def _reset_at(self) -> float:
        return (self.window_start or time.time()) + self.window_s

    def take(self, nsid: str, body: bytes) -> dict[str, str] | None:
        """None when the call may go on; else the 429's headers."""
        if nsid != "com.atproto.repo.applyWrites":
            return None
        writes = json.loads(body).get("writes", [])
        cost = sum(WRITE_POINTS.get(w.get("$type", "").rsplit("#", 1)[-1], 1) for w in writes)
        with self._lock:
            now = time.time()
            if self.window_start is None or self._ended(now):
                self.window_start, self.used = now, 0
            if self.used + cost > self.points:
                self.refused += 1
                return self._refusal()
            self.used += cost
            return None

    def _ended(self, now: float) -> bool:
        return now >= self._reset_at()

    def _refusal(self) -> dict[str, str]:
        return self.headers()

    def headers(self) -> dict[str, str]:
        reset = self._reset_at()
        return {
            "ratelimit-limit": str(self.points),
            "ratelimit-remaining": str(max(0, self.points - self.used)),
            "ratelimit-reset": str(int(reset + 0.999)),
            "ratelimit-policy": f"{self.points};w={int(self.window_s)}",
        }


class HeldWindowLimiter(WriteLimiter):
    """A `WriteLimiter` whose window ends only when the test says so (`release`), however long a run takes:
    on a slow machine the window cannot reset on its own between two batches. Its 429s announce a reset at
    the window's end, or `ahead_s` after the refusal when that is later (so the reset a client is asked to
    wait for is always still ahead of it); `announced` keeps each (epoch seconds)."""

    def __init__(self, points: int, window_s: float, ahead_s: float = 10.0):
        super().__init__(points, window_s)
        self.ahead_s = ahead_s
        self.announced: list[float] = []

    def _reset_at(self) -> float:
        return max((self.window_start or time.time()) + self.window_s, time.time() + self.ahead_s)

    def _ended(self, now: float) -> bool:
        return False  # only `release` ends the window

    def _refusal(self) -> dict[str, str]:
        headers = self.headers()
        self.announced.append(float(headers["ratelimit-reset"]))
        return headers

    def release(self) -> None:
        """The window ends now: the next write starts a new one."""
        with self._lock:
            self.window_start, self.used = None, 0


class FaultProxy:
    """A threaded HTTP proxy to `upstream` injecting faults; `requests` counts requests per method and
    `faults` injected faults per (kind, method). Decisions are a function of (seed, method, n), so a test is
    reproducible however threads interleave; `max_in_a_row` keeps a fault transient (the next request of
    that method after so many faults goes through). `script` forces a fault on the n-th request of a
    method; `rate_headers` adds headers to forwarded answers (`ratelimit-*` pressure); the PDS's answers to
    the methods in `keep_answers` are kept in `answers` (the secrets test collects every token from them).
    `active = False` turns random and scripted faults off (hooks still run)."""

    def __init__(
        self,
        upstream: str,
        rules: list[Rule] | tuple[Rule, ...] = (),
        *,
        script: dict[tuple[str, int], str] | None = None,
        seed: int = 0,
        max_in_a_row: int = 2,
        retry_after: int = 1,
        stall_s: float = 2.0,
        rate_headers: Callable[[str], dict[str, str] | None] | None = None,
        keep_answers: frozenset[str] = frozenset(),
        limiter: WriteLimiter | None = None,
    ):
        self.upstream = upstream.rstrip("/")
        self.rules = list(rules)
        self.script = dict(script or {})
        self.seed = seed
        self.max_in_a_row = max_in_a_row
        self.retry_after = retry_after
        self.stall_s = stall_s
        self.rate_headers = rate_headers
        self.keep_answers = keep_answers
        self.limiter = limiter
        self.answers: list[tuple[str, bytes]] = []  # (method, body) of the PDS's answers to keep_answers
        self.hooks: list[Hook] = []
        self.requests: Counter[str] = Counter()
        self.answered: Counter[tuple[str, int]] = Counter()  # the PDS's answers by (method, status)
        self.faults: Counter[tuple[str, str]] = Counter()
        self.active = True
        self._in_a_row: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=120)
        self._server = ProxyServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    # -- life ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close_all()
        self._client.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- decisions -------------------------------------------------------------------------------

    def _number(self, nsid: str) -> int:
        with self._lock:
            self.requests[nsid] += 1
            return self.requests[nsid]

    def _decide(self, nsid: str, n: int) -> str | None:
        if not self.active:
            return None
        kind = self.script.get((nsid, n))
        if kind is None and self.rules:
            with self._lock:
                if self._in_a_row[nsid] >= self.max_in_a_row:
                    self._in_a_row[nsid] = 0
                    return None
            roll = random.Random(f"{self.seed}:{nsid}:{n}").random()
            for rule in self.rules:
                if not rule.applies(nsid):
                    continue
                if roll < rule.share:
                    kind = rule.kind
                    break
                roll -= rule.share
        with self._lock:
            self._in_a_row[nsid] = self._in_a_row[nsid] + 1 if kind else 0
        return kind

    def _count(self, kind: str, nsid: str) -> None:
        with self._lock:
            self.faults[(kind, nsid)] += 1

    def faults_by_kind(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (kind, _), n in self.faults.items():
            out[kind] += n
        return out

    def _hooks(self, seen: Seen) -> str | None:
        for hook in self.hooks:
            kind = hook(seen)
            if kind:
                return kind
        return None


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK wait

        def _handle(self) -> None:
            body = self._body = read_body(self)
            nsid = urlsplit(self.path).path.removeprefix("/xrpc/")
            n = proxy._number(nsid)
            kind = proxy._hooks(Seen(nsid, n, "before", body)) or proxy._decide(nsid, n)
            if kind in BEFORE and kind != "stall":
                proxy._count(kind, nsid)
                self._fault(kind)
                return
            if kind == "stall":
                proxy._count(kind, nsid)
                time.sleep(proxy.stall_s)
            refused = proxy.limiter.take(nsid, body) if proxy.limiter else None
            if refused is not None:
                proxy._count("429", nsid)
                self._fault("429", refused)
                return
            headers = dict(end_to_end(self.headers.items(), drop=DECODED))
            try:
                answer = proxy._client.request(self.command, self.path, content=body or None, headers=headers)
            except httpx.HTTPError:
                self._fault("502")
                return
            with proxy._lock:
                proxy.answered[(nsid, answer.status_code)] += 1
            if nsid in proxy.keep_answers:
                with proxy._lock:
                    proxy.answers.append((nsid, answer.content))
            after = proxy._hooks(Seen(nsid, n, "after", body))
            if after is None and kind in AFTER:
                after = kind
            if after:
                proxy._count(after if after.endswith("_after") else f"{after}_after", nsid)
                self._fault(after.removesuffix("_after"))
                return
            extra = proxy.rate_headers(nsid) if proxy.rate_headers else None
            if proxy.limiter and nsid == "com.atproto.repo.applyWrites":
                extra = {**(extra or {}), **proxy.limiter.headers()}
            self.send_response(answer.status_code)
            for key, value in end_to_end(answer.headers.items(), drop=DECODED):
                self.send_header(key, value)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def _fault(self, kind: str, rate_headers: dict[str, str] | None = None) -> None:
            if kind == "200_unsent":
                self._unsent(json.loads(self._body or b"{}"))
                return
            if kind in ("drop", "reset"):
                if kind == "reset":  # RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            status = int(kind)
            headers = {"Content-Type": "application/json"}
            if status == 429:
                error = {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
                headers.update(
                    rate_headers
                    or {
                        "ratelimit-limit": "3000",
                        "ratelimit-remaining": "0",
                        "ratelimit-reset": str(int(time.time()) + proxy.retry_after),
                        "ratelimit-policy": "3000;w=300",
                        "retry-after": str(proxy.retry_after),
                    }
                )
            elif status == 500:
                error = {"error": "InternalServerError", "message": "Internal Server Error"}
            else:
                error = {"error": "UpstreamFailure", "message": "Bad Gateway"}
            data = json.dumps(error).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

        def _unsent(self, request: dict[str, Any]) -> None:
            """What the PDS would answer had it applied the writes (a made-up commit and CIDs)."""
            fake_cid = "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            results = [
                {"uri": f"at://{request.get('repo')}/{w.get('collection')}/{w.get('rkey')}", "cid": fake_cid}
                for w in request.get("writes", [])
                if not str(w.get("$type", "")).endswith("#delete")
            ]
            payload = json.dumps({"commit": {"cid": fake_cid, "rev": "3zzzzzzzzzzz2"}, "results": results})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


class StubStorage:
    """Serves `root/{path}` like the demo's media server (GET and HEAD), except paths containing a key of
    `behaviours`: "500", "stall" (headers, then silence), "trickle" (a byte every 0.05 s, forever), or
    "redirect:<url>". `asked` lists every path requested, so a test can prove a request never came."""

    def __init__(self, root: Path, behaviours: dict[str, str] | None = None, stall_s: float = 5.0):
        self.root = Path(root)
        self.behaviours = dict(behaviours or {})
        self.stall_s = stall_s
        self.asked: list[str] = []
        self._stop = threading.Event()
        self._server = ProxyServer(("127.0.0.1", 0), _storage_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="stubstorage", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StubStorage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.close_all()

    def __enter__(self) -> StubStorage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url_templates(self) -> dict[str, str]:
        return {
            "image_url": f"{self.url}/{{bucket}}/{{user}}/painting/{{slug}}.png",
            "guest_image_url": f"{self.url}/{{bucket}}/{{slug}}.png",
            "zip_url": f"{self.url}/{{bucket}}/{{user_dir}}{{slug}}.zip",
        }


def _storage_handler(stub: StubStorage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK wait

        def _serve(self, body: bool) -> None:
            stub.asked.append(self.path)
            path = unquote(urlsplit(self.path).path)
            behaviour = next((b for key, b in stub.behaviours.items() if key in path), None)
            if behaviour == "500":
                self._status(500, body)
                return
            if behaviour and behaviour.startswith("redirect:"):
                self.send_response(302)
                self.send_header("Location", behaviour.removeprefix("redirect:"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if behaviour == "stall":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                stub._stop.wait(stub.stall_s)
                self.close_connection = True
                return
            if behaviour == "trickle":
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                while not stub._stop.is_set():
                    try:
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                    except OSError:
                        break
                    time.sleep(0.05)
                self.close_connection = True
                return
            parts = [p for p in path.split("/") if p]
            target = stub.root.joinpath(*parts) if parts else stub.root
            if ".." in parts or not target.is_file():
                self._status(404, body)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(target.stat().st_size))
            self.end_headers()
            if body:
                with target.open("rb") as fh:
                    shutil.copyfileobj(fh, self.wfile)

        def _status(self, status: int, body: bool) -> None:
            data = f"{status}\n".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(body=False)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler
