"""The demo's world kept running in the background, so every command in the checkout works on its data.

`acpipeline demo` (and `demo up`) start one background process (`python -m acpipeline.demo.world`) that owns
the local PDS and the media server, and save them in `ACPIPELINE_HOME/demo/world.json`. Their URLs go where
any deployment's settings go, the product's settings file (`write_settings`), so every other command,
`dagster dev` and the runs it starts reach the same PDS, media and embedded store without exporting
anything; an environment that sets any of them otherwise (a real database, another PDS) keeps its own.

The reference PDS keeps its DID directory in memory, so a PDS that stopped has lost every account: bringing
the world back (`demo up`) starts a new one and seeds the demo data again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from acpipeline.errors import OperatorError
from acpipeline.settings import acpipeline_home
from acpipeline.settings_file import SETTINGS_FILE, settings_path

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
BRING_BACK = "'acpipeline demo up' starts them again and re-seeds the demo data"


def world_dir() -> Path:
    folder = acpipeline_home() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def state_path() -> Path:
    return world_dir() / "world.json"


@dataclass
class SavedWorld:
    """What `world.json` holds: enough for another process to reach the demo's services and to stop them."""

    pid: int  # the background process that serves the media and owns the local PDS
    pds_url: str
    media_url: str
    media_root: str
    templates: dict[str, str]  # environment variable -> URL template of the demo's media server
    started: str
    pds_pid: int | None = None  # the local PDS's own process (None: an outside PDS_URL)
    pds_admin_password: str | None = None  # the local PDS's (never an outside PDS's)
    dataset: dict[str, object] = field(default_factory=dict)  # size and counts, once seeded

    def environment(self) -> dict[str, str]:
        env = {"PDS_URL": self.pds_url, **self.templates}
        if self.pds_admin_password:
            env["PDS_ADMIN_PASSWORD"] = self.pds_admin_password
        return env

    def save(self) -> None:
        path = state_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)  # the local PDS's admin password
        tmp.replace(path)


def load_saved_world() -> SavedWorld | None:
    try:
        return SavedWorld(**json.loads(state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int | None, marker: str) -> bool:
    """The process is running and is ours (its command line names `marker`), not a reused pid."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def is_running(world: SavedWorld) -> bool:
    return _alive(world.pid, "acpipeline.demo.world") and (
        world.pds_pid is None or _alive(world.pds_pid, "start.mjs")
    )


SETTINGS_HEADER = "# The demo world's settings, written by `acpipeline demo` ({started})."


def write_settings(world: SavedWorld) -> Path:
    """The world's settings in the product's settings file (`acpipeline.settings_file`), as an operator
    writes a deployment's: every command, `dagster dev` and its runs then reach the demo's PDS, media and
    embedded store with nothing exported. `MONGODB_CONNECTION_STRING` is set empty (the embedded store), so
    a shell with a real database exported never mixes the two: the file then does not apply at all. A file
    the demo did not write is left alone."""
    path = settings_path()
    if path.exists() and not path.read_text().startswith(SETTINGS_HEADER.split("(")[0]):
        raise OperatorError(
            f"{path} holds settings the demo did not write: move it, or set {SETTINGS_FILE} elsewhere"
        )
    header = SETTINGS_HEADER.format(started=world.started)
    lines = [header, f"# Its services run in the background; {BRING_BACK}."]
    values = {"MONGODB_CONNECTION_STRING": "", **world.environment()}
    lines += [f"{name}={json.dumps(value)}" for name, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)  # the local PDS's admin password
    tmp.replace(path)
    return path


def start_background(log: Callable[[str], None] = print) -> SavedWorld:
    """Start the world's background process and wait until its services answer."""
    from acpipeline.localpds import server

    if not os.environ.get("PDS_URL"):
        server.install(log=log)  # here, so a first install reports its progress on this terminal
    path = state_path()
    path.unlink(missing_ok=True)
    log_path = world_dir() / "world.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "acpipeline.demo.world"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command and its terminal
            env={**os.environ, "ACPIPELINE_HOME": str(acpipeline_home())},
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        world = load_saved_world()
        if world is not None and world.pid == process.pid:
            return world
        if process.poll() is not None:
            lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {process.returncode}"
            raise OperatorError(f"the demo's services did not start: {reason} (log: {log_path})")
        time.sleep(0.2)
    _terminate(process.pid)
    raise OperatorError(f"the demo's services did not start within {START_TIMEOUT_S:.0f} s (log: {log_path})")


def stop(world: SavedWorld) -> None:
    """Stop the background process (it stops the PDS and the media server) and anything it left behind."""
    _terminate(world.pid)
    if world.pds_pid and _alive(world.pds_pid, "start.mjs"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(world.pds_pid, signal.SIGKILL)


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    if not _wait(pid, lambda: not _alive(pid, "acpipeline.demo.world")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # An exiting process loses its command line before it has ended: wait until it has (or is a zombie).
    _wait(pid, lambda: _ended(pid))


def _wait(pid: int, done: Callable[[], bool]) -> bool:
    """Up to STOP_TIMEOUT_S for `done()`, reaping `pid` meanwhile when this process started it."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and not done():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return done()


def _ended(pid: int) -> bool:
    """No such process, or one that has exited and waits for its parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def status_lines(world: SavedWorld | None) -> tuple[bool, list[str]]:
    """(running, what `demo status` prints)."""
    if world is None:
        return False, ["no demo world in this ACPIPELINE_HOME: 'acpipeline demo' creates one"]
    running = is_running(world)
    lines = [
        f"demo world: {'running' if running else 'stopped'} (started {world.started}, pid {world.pid})",
        f"PDS: {world.pds_url}" + ("" if world.pds_pid else " (outside; PDS_URL)") + _health(world, running),
        f"media server: {world.media_url}",
    ]
    if world.dataset:
        counts = world.dataset.get("counts") or {}
        seeded = ", ".join(f"{n} {c}" for c, n in counts.items()) if isinstance(counts, dict) else ""
        lines.append(f"dataset: {world.dataset.get('size')} ({seeded}) in {acpipeline_home() / 'mongo'}")
    lines.append("'acpipeline demo down' stops it" if running else BRING_BACK)
    return running, lines


def _health(world: SavedWorld, running: bool) -> str:
    if not running:
        return ""
    try:
        version = httpx.get(f"{world.pds_url}/xrpc/_health", timeout=3).json().get("version")
    except (httpx.HTTPError, ValueError):
        return " (not answering)"
    return f" (version {version})"


def serve() -> None:
    """The background process: start the services, save where they are, and keep them up until SIGTERM."""
    from acpipeline.demo.environment import TEMPLATE_ENV, start_environment

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    owns_pds = not os.environ.get("PDS_URL")
    env = start_environment(log=lambda line: print(line, flush=True))
    try:
        media_templates = env.media.url_templates()
        world = SavedWorld(
            pid=os.getpid(),
            pds_url=env.pds_url,
            media_url=env.media.url,
            media_root=str(env.media.media_root),
            templates={TEMPLATE_ENV[name]: template for name, template in media_templates.items()},
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            pds_pid=env.local_pds.process.pid if env.local_pds else None,
            pds_admin_password=env.local_pds.admin_password if env.local_pds and owns_pds else None,
        )
        world.save()
        print(f"demo world up: PDS {world.pds_url}, media {world.media_url}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    finally:
        env.close()
        print("demo world stopped", flush=True)


if __name__ == "__main__":
    try:
        serve()
    except OperatorError as exc:
        print(exc, flush=True)
        sys.exit(2)
