"""A pass-through HTTP proxy in front of the PDS (or the media storage) that counts write requests, so the
benchmark counts the writes the PDS received rather than trusting the pipeline's own report; and that can
put a network between the client and the server (`rtt_ms`, `bandwidth_mbit`).

The network is modelled per request, on the client's own connections: each client connection gets one
upstream connection of its own, so a client keeping connections alive keeps them alive through the proxy
too. A request reaches the server half a round trip after the client sent it (plus its bytes at the link's
bandwidth), the answer reaches the client half a round trip after the server sent it; the first request on
a new connection waits one more round trip, the TCP handshake. Bandwidth is one link per direction, shared
by all connections, first come first served. Not modelled: TCP slow start, loss, TLS's extra round trip.
Every exchange is kept (`exchanges`, `take`), so a run can be profiled by method (`summarize`).
"""

from __future__ import annotations

import http.client
import itertools
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from acpipeline.bench.proxying import ProxyServer, end_to_end, read_body, send_answer

WRITE_METHODS = (
    "com.atproto.repo.applyWrites",
    "com.atproto.repo.createRecord",
    "com.atproto.repo.putRecord",
    "com.atproto.repo.deleteRecord",
    "com.atproto.repo.uploadBlob",
)
_COLLECTION = re.compile(rb'"collection"\s*:\s*"([^"]{1,200})"')
UPSTREAM_IDLE_S = 30.0  # an upstream connection idle longer is replaced (the PDS keeps them 90 s)


class Link:
    """One direction of a network path: every message arrives `delay_s` after it was sent, plus its bytes
    at `bandwidth_mbit` on a link all connections share (first come, first served)."""

    def __init__(self, delay_s: float, bandwidth_mbit: float | None = None) -> None:
        self.delay_s = delay_s
        self.bytes_per_s = bandwidth_mbit * 1e6 / 8 if bandwidth_mbit else None
        self._free_at = 0.0
        self._lock = threading.Lock()

    def arrival(self, size: int, sent_at: float) -> float:
        if self.bytes_per_s is None:
            return sent_at + self.delay_s
        with self._lock:
            self._free_at = max(sent_at, self._free_at) + size / self.bytes_per_s
            return self._free_at + self.delay_s


@dataclass(frozen=True)
class Exchange:
    """One request through the proxy, times in `time.perf_counter()` seconds: from its headers read to its
    answer written (`start`, `end`), and the server's own part (`upstream_s`)."""

    method: str
    start: float
    end: float
    upstream_s: float
    connection: int
    new_connection: bool
    sent: int
    received: int
    status: int
    collection: str = ""  # the collection a listing or a write names, when it names one


def _sleep_until(moment: float) -> None:
    wait = moment - time.perf_counter()
    if wait > 0:
        time.sleep(wait)


def _collection(path: str, body: bytes) -> str:
    """The collection a request names: its `collection` parameter, or the first one in a JSON body."""
    named = parse_qs(urlsplit(path).query).get("collection")
    if named:
        return named[0]
    found = _COLLECTION.search(body[:4096]) if body[:1] == b"{" else None
    return found.group(1).decode(errors="replace") if found else ""


def _head_size(first_line: str, headers: list[tuple[str, str]]) -> int:
    return len(first_line) + 4 + sum(len(k) + len(v) + 4 for k, v in headers)


class CountingProxy:
    def __init__(
        self,
        upstream: str,
        rtt_ms: float = 0.0,
        bandwidth_mbit: float | None = None,
        name: str = "pds",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        parts = urlsplit(self.upstream)
        self._https = parts.scheme == "https"
        self._address = (parts.hostname or "127.0.0.1", parts.port or (443 if self._https else 80))
        self.name = name
        self.rtt_s = rtt_ms / 1000
        self.bandwidth_mbit = bandwidth_mbit
        self.up = Link(self.rtt_s / 2, bandwidth_mbit)
        self.down = Link(self.rtt_s / 2, bandwidth_mbit)
        self.counts: Counter[str] = Counter()  # writes, by method
        self.exchanges: list[Exchange] = []
        self._lock = threading.Condition()
        self._answering = 0  # answers on their way to a client, their exchange not yet recorded
        self._connections = itertools.count(1)
        self._server = ProxyServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"proxy-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close_all()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_counts(self) -> dict[str, int]:
        """The writes so far, by method."""
        with self._lock:
            self._settle()
            return dict(self.counts)

    def writes(self) -> int:
        return sum(self.write_counts().values())

    def take(self) -> list[Exchange]:
        """The exchanges since the last `take`, forgotten here. An answer the client already holds is
        recorded an instant after it was sent (see `_settle`)."""
        with self._lock:
            self._settle()
            taken, self.exchanges = self.exchanges, []
        return taken

    def _settle(self) -> None:
        """Waits, lock held, for the answers already sent to be recorded (an answer the client holds is
        recorded an instant later), not for requests still being served."""
        self._lock.wait_for(lambda: self._answering == 0, timeout=5)

    def label(self, command: str, path: str) -> str:
        """The XRPC method of a request, else `{name}:{command} {file suffix}` (a storage object)."""
        route = urlsplit(path).path
        if route.startswith("/xrpc/"):
            return route.removeprefix("/xrpc/")
        name = route.rsplit("/", 1)[-1]
        return f"{self.name}:{command} {'.' + name.rsplit('.', 1)[-1] if '.' in name else name}"

    def _upstream(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(*self._address, timeout=300)
        return http.client.HTTPConnection(*self._address, timeout=300)

    def _answering_begins(self) -> None:
        with self._lock:
            self._answering += 1

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._answering -= 1
            self._lock.notify_all()
            self._keep(exchange)

    def _keep(self, exchange: Exchange) -> None:
        """Keeps one exchange; called with the lock held."""
        self.exchanges.append(exchange)
        if exchange.method in WRITE_METHODS:
            self.counts[exchange.method] += 1


def _handler(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """One client connection: its own upstream connection, the handshake paid by its first request."""

        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK wait

        def setup(self) -> None:
            super().setup()
            self.opened = time.perf_counter()
            self.connection_id = next(proxy._connections)
            self.served = 0
            self.upstream: http.client.HTTPConnection | None = None
            self.upstream_used = 0.0

        def finish(self) -> None:
            self._drop_upstream()
            super().finish()

        def _drop_upstream(self) -> None:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None

        def _forward(self) -> None:
            start = time.perf_counter()
            body = read_body(self)
            headers = end_to_end(self.headers.items())
            sent_at = time.perf_counter()
            if self.served == 0:  # the client could send only after the handshake's round trip
                sent_at = max(sent_at, self.opened + proxy.rtt_s)
            _sleep_until(proxy.up.arrival(_head_size(self.requestline, headers) + len(body), sent_at))
            asked = time.perf_counter()
            try:
                status, answer_headers, data = self._ask(headers, body)
            except (OSError, http.client.HTTPException):
                self._drop_upstream()
                status, answer_headers, data = 502, [("Content-Type", "text/plain")], b"upstream failed\n"
                self.close_connection = True
            answered = time.perf_counter()
            size = _head_size("HTTP/1.1 200 OK", answer_headers) + len(data)
            _sleep_until(proxy.down.arrival(size, answered))
            length = None
            if self.command == "HEAD":
                length = int(dict((k.lower(), v) for k, v in answer_headers).get("content-length") or 0)
            proxy._answering_begins()
            try:
                send_answer(self, status, answer_headers, data, length)
            finally:
                proxy._record(
                    Exchange(
                        proxy.label(self.command, self.path),
                        start,
                        time.perf_counter(),
                        answered - asked,
                        self.connection_id,
                        self.served == 0,
                        len(body),
                        len(data),
                        status,
                        _collection(self.path, body),
                    )
                )
            self.served += 1

        def _ask(
            self, headers: list[tuple[str, str]], body: bytes
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            """The upstream's answer on this connection's upstream connection: raw bytes (a compressed
            answer stays compressed, as the client would receive it)."""
            if self.upstream is not None and time.perf_counter() - self.upstream_used > UPSTREAM_IDLE_S:
                self._drop_upstream()
            if self.upstream is None:
                self.upstream = proxy._upstream()
            self.upstream.request(self.command, self.path, body=body or None, headers=dict(headers))
            response = self.upstream.getresponse()
            data = response.read()
            self.upstream_used = time.perf_counter()
            if response.will_close:
                self._drop_upstream()
                self.close_connection = True  # the server ends the connection: so does the client's
            return response.status, response.getheaders(), data

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return Handler


def summarize(exchanges: list[Exchange], origin: float | None = None) -> dict[str, Any]:
    """Where a phase's requests spent their time: per method the requests, the seconds they were in the
    proxy (network and server), the server's seconds, new connections, the most in flight at once, and the
    seconds it was the only request in flight (`alone_s`: serial time); overall the same, plus the time
    with anything in flight (`busy_s`) and with exactly one (`serial_s`). `origin`: the phase's start."""
    if not exchanges:
        return {"requests": 0, "methods": {}}
    events = sorted([(e.start, 1, e.method) for e in exchanges] + [(e.end, -1, e.method) for e in exchanges])
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    alone: dict[str, float] = {}  # seconds (a Counter's values are counts)
    busy = serial = 0.0
    previous = events[0][0]
    for moment, step, method in events:
        total = sum(in_flight.values())
        if total:
            busy += moment - previous
        if total == 1:
            serial += moment - previous
            only = next(m for m, n in in_flight.items() if n)
            alone[only] = alone.get(only, 0) + moment - previous
        in_flight[method] += step
        peak[method] = max(peak[method], in_flight[method])
        previous = moment
    methods: dict[str, dict[str, Any]] = {}
    for e in sorted(exchanges, key=lambda e: e.method):
        row = methods.setdefault(e.method, {"n": 0, "s": 0.0, "server_s": 0.0, "new_connections": 0})
        row["n"] += 1
        row["s"] += e.end - e.start
        row["server_s"] += e.upstream_s
        row["new_connections"] += e.new_connection
    for method, row in methods.items():
        row.update(max_in_flight=peak[method], alone_s=alone.get(method, 0))
        for key in ("s", "server_s", "alone_s"):
            row[key] = round(row[key], 2)
    first = min(e.start for e in exchanges)
    last = max(e.end for e in exchanges)
    out: dict[str, Any] = {
        "requests": len(exchanges),
        "new_connections": sum(e.new_connection for e in exchanges),
        "busy_s": round(busy, 2),
        "serial_s": round(serial, 2),
        "methods": dict(sorted(methods.items(), key=lambda item: -item[1]["s"])),
    }
    if origin is not None:
        out.update(first_request_s=round(first - origin, 2), last_answer_s=round(last - origin, 2))
    return out


def as_rows(exchanges: list[Exchange], origin: float = 0.0) -> list[dict[str, Any]]:
    """The exchanges as JSON rows, times relative to `origin`."""
    rows = []
    for e in exchanges:
        row = asdict(e)
        row.update(
            start=round(e.start - origin, 4), end=round(e.end - origin, 4), upstream_s=round(e.upstream_s, 4)
        )
        rows.append(row)
    return rows
