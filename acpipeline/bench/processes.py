"""The platform bench's server processes: started in the checkout in sessions of their own, stopped with
their process groups, and found again by the marker variable in their environment (set only for the
servers the bench starts, so every process they start carries it too): what outlives its group is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[2]
MARKER = "ACPIPELINE_BENCH_PLATFORM"  # in the servers' environment only: finds their whole process tree


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            args,
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_interruptible,
        )


def _interruptible() -> None:
    """Run in the child before its program: Ctrl-C back to its default. A shell without job control
    starts `cmd &` with SIGINT ignored, and Python keeps an inherited SIG_IGN; `dagster dev` then makes
    SIGTERM what SIGINT is, so it would ignore `_stop`'s SIGTERM too and stay until the SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the process and its process group (its code servers, the runs they started): SIGTERM, up to
    30 s, then SIGKILL to whatever of the group is left, also when interrupted meanwhile."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def _marked(token: str) -> list[psutil.Process]:
    """Every live process of the bench's servers: they and whatever they started (directly or not) carry
    the marker in their environment."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == token:
                found.append(process)
    return found


def _kill_marked(token: str) -> int:
    """SIGKILL, by pid, any process of the bench's servers that outlived their process groups."""
    left = [p for p in _marked(token) if p.pid != os.getpid()]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=10)
    return len(left)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
