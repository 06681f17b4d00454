"""A pass-through HTTP proxy in front of the PDS that counts write requests, so the benchmark counts the
writes the PDS received rather than trusting the pipeline's own report."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

WRITE_METHODS = (
    "com.atproto.repo.applyWrites",
    "com.atproto.repo.createRecord",
    "com.atproto.repo.putRecord",
    "com.atproto.repo.deleteRecord",
    "com.atproto.repo.uploadBlob",
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class CountingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK wait

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                method = self.path.split("?")[0].removeprefix("/xrpc/")
                if method in WRITE_METHODS:
                    with proxy._lock:
                        proxy.counts[method] += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                answer = proxy._client.request(self.command, self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def writes(self) -> int:
        return sum(self.counts.values())
