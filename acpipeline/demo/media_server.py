"""A local stand-in for the platform's Spaces buckets: serves `media_root/{bucket}/{object key}` over HTTP."""

from __future__ import annotations

import shutil
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REQUESTS_KEPT = 100_000
BLOBS_BUCKET = "at-blobs-aesthetic-computer"  # the oven's bucket: its objects under media_root/BLOBS_BUCKET

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".zip": "application/zip",
    ".json": "application/json",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".mjs": "text/javascript",
}


def resolve_media_path(root: Path, url_path: str) -> Path | None:
    """The file under `root` that a request path names, or None when it would escape `root`."""
    path = unquote(urlsplit(url_path).path)
    if "\x00" in path or "\\" in path:
        return None
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        return None
    target = root.joinpath(*parts).resolve()
    return target if target.is_relative_to(root) else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, each response then waits for
    # the client's delayed ACK (40 ms on Linux), which no real object store adds.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        self.server.requested.append(unquote(urlsplit(self.path).path))
        target = resolve_media_path(self.server.root, self.path)
        if target is None:
            self._empty(HTTPStatus.FORBIDDEN, body)
            return
        if not target.is_file():
            self._empty(HTTPStatus.NOT_FOUND, body)
            return
        try:
            fh = target.open("rb")
        except OSError:
            self._empty(HTTPStatus.NOT_FOUND, body)
            return
        with fh:
            size = target.stat().st_size
            self.send_response(HTTPStatus.OK)
            self.send_header(
                "Content-Type", CONTENT_TYPES.get(target.suffix.lower(), "application/octet-stream")
            )
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body:
                shutil.copyfileobj(fh, self.wfile)

    def _empty(self, status: HTTPStatus, body: bool) -> None:
        message = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if body:
            self.wfile.write(message)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no per-request logging
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    requested: deque[str]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-download are not worth a traceback


class MediaServer:
    """Serves `media_root` at `http://127.0.0.1:{port}/{bucket}/{key}` (GET and HEAD) from a daemon thread."""

    def __init__(self, media_root: Path, port: int = 0) -> None:
        self.media_root = Path(media_root).resolve()
        self.port = port
        # The latest paths asked for, so a test can tell what a sync fetched (deque.append is thread-safe).
        self.requested: deque[str] = deque(maxlen=REQUESTS_KEPT)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MediaServer:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.root = self.media_root
        server.requested = self.requested
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="acpipeline-media", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("MediaServer is not started")
        return f"http://127.0.0.1:{self.port}"

    def url_templates(self) -> dict[str, str]:
        """Local equivalents of the production URL templates ({bucket}, {user}, {slug}, {user_dir}; the
        oven's bucket: {key})."""
        url = self.url
        return {
            "image_url": f"{url}/{{bucket}}/{{user}}/painting/{{slug}}.png",
            "guest_image_url": f"{url}/{{bucket}}/{{slug}}.png",
            "zip_url": f"{url}/{{bucket}}/{{user_dir}}{{slug}}.zip",
            "blobs_url": f"{url}/{BLOBS_BUCKET}/{{key}}",
        }
