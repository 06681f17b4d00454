"""What every HTTP proxy in front of the PDS or the media storage needs: the hop-by-hop headers to drop, a
request body read whole (Content-Length or chunked), an answer sent whole, and a threaded server that can
end its kept-alive connections when it stops (as a server going away does)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Hop-by-hop headers (RFC 9110 §7.6.1) and the framing a proxy sets again itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


def end_to_end(headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers a proxy passes on: all but the hop-by-hop ones (and `drop`)."""
    skip = HOP_BY_HOP | {name.lower() for name in drop}
    return [(key, value) for key, value in headers if key.lower() not in skip]


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, whole: by Content-Length, or de-chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def send_answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    length: int | None = None,
) -> None:
    """An answer with the end-to-end `headers`, framed by Content-Length (`length` for a HEAD answer, whose
    body is empty); one write for the body."""
    handler.send_response(status)
    for key, value in end_to_end(headers):
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if body:
        handler.wfile.write(body)


class ProxyServer(ThreadingHTTPServer):
    """A thread per connection; tracks its open connections, so `close_all` also ends kept-alive ones."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        self.shutdown()
        self.server_close()
        with self.open_lock:
            for sock in list(self.open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up (or being killed) mid-request are expected here
