"""A throwaway Redis for the Celery layout's tests and the platform bench's `--launcher celery`: Debian's
`redis-server` (`make test` installs it) with deploy/celery/redis.conf, its port and folder substituted,
stopped by its process id.

`restart()` keeps the folder: what the append-only file kept is what a restarted broker still has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from acpipeline.errors import OperatorError
from acpipeline.localpds.server import free_port

CONF = Path(__file__).resolve().parents[2] / "deploy" / "celery" / "redis.conf"
DEPLOYED_DIR, DEPLOYED_PORT = "dir /srv/acpipeline/redis", "port 6379"


@dataclass
class RedisServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30) -> None:
        if shutil.which("redis-server") is None:
            raise OperatorError("Redis is missing: apt-get install -y redis-server (make test installs it)")
        # The deploy file, with this server's port and folder.
        text = CONF.read_text()
        assert DEPLOYED_DIR in text and DEPLOYED_PORT in text, (
            "deploy/celery/redis.conf changed its dir or port"
        )
        conf = self.root / "redis.conf"
        conf.write_text(
            text.replace(DEPLOYED_DIR, f"dir {self.root}").replace(DEPLOYED_PORT, f"port {self.port}")
        )
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server writes it until it stops
        self.process = subprocess.Popen(
            ["redis-server", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Redis did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"Redis did not answer within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: only what the append-only file holds survives."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis() -> RedisServer:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="acpipeline-redis-")), free_port())
    server.start()
    return server
