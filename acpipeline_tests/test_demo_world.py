"""The README's walkthrough as a new user runs it, each command a process of its own with nothing exported:
demo, look, wipe, restore, look again; the demo world stopped and brought back; its settings file; and
explicit settings winning over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acpipeline.demo.world import SavedWorld

ROOT = Path(__file__).resolve().parents[1]
HANDLE = "jeffrey.at.aesthetic.computer"
# What a new user's shell holds: none of the settings a test session exports for its own PDS and media.
CLEARED = ("PDS_URL", "PDS_ADMIN_PASSWORD", "MONGODB_CONNECTION_STRING", "MONGODB_NAME")


@pytest.fixture
def home(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and not k.startswith("ACPIPELINE_")}
    env.update(ACPIPELINE_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster_home"))

    def run(*args: str, extra: dict[str, str] | None = None, module: str = "acpipeline.cli"):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            env={**env, **(extra or {})},
            cwd=ROOT,
            timeout=600,
        )

    run.home = tmp_path / "home"  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        run("demo", "down")


def on_pds(run, handle: str | None = None, key: str = "on_pds") -> dict[str, int]:
    """`acpipeline status --json`: per partition, its records on the PDS (or another column)."""
    result = run("status", "--json", *(["--handle", handle] if handle else []))
    assert result.returncode == 0, result.stderr
    return {f"{r['handle']}|{r['media']}": r[key] for r in json.loads(result.stdout)}


def saved_world(home: Path) -> SavedWorld:
    return SavedWorld(**json.loads((home / "demo" / "world.json").read_text()))


def alive(pid: int) -> bool:
    """Running (a zombie left for a container's init to reap has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def one_line(result: subprocess.CompletedProcess, *needles: str, first: str | None = None) -> None:
    """The command failed with one plain line naming the needles (after the line `first` names, if any)."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if first is not None:
        assert len(lines) == 2 and first in lines[0], result.stderr
        lines = lines[1:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_the_demo_world_serves_every_later_command(home):
    demo = home("demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "keep running in the background" in demo.stdout
    world = saved_world(home.home)
    assert alive(world.pid) and world.pds_pid and alive(world.pds_pid)

    status = home("demo", "status")
    assert status.returncode == 0 and "demo world: running" in status.stdout, status.stdout
    assert world.pds_url in status.stdout and world.media_url in status.stdout

    # Look: another process, with nothing exported, sees what the demo synced.
    before = on_pds(home)
    kept_before = on_pds(home, key="not_in_mongodb")
    assert before[f"{HANDLE}|painting"] > 0 and before[f"{HANDLE}|tape"] > 0

    # Wipe, then restore: paintings and tapes come back from the demo's media server.
    wipe = home("wipe", "--handle", HANDLE, "--yes", "--json")
    assert wipe.returncode == 0, wipe.stderr
    assert json.loads(wipe.stdout)["records_deleted"] == sum(
        n for k, n in before.items() if k.startswith(HANDLE)
    )
    assert all(n == 0 for n in on_pds(home, HANDLE).values())
    restore = home("sync", "--handle", HANDLE, "--json")
    assert restore.returncode == 0, restore.stderr
    rows = json.loads(restore.stdout)["partitions"]
    reasons = [f["reason"] for r in rows for f in r.get("failed_items") or []]
    assert not [r for r in reasons if "unreachable" in r], reasons
    # Everything comes back but the KidLisp records only the platform's own store has (MongoDB lacks their
    # rows): the wipe deleted those too, and no sync can bring them back.
    assert kept_before[f"{HANDLE}|kidlisp"] == 1
    restored = {k: n - (kept_before[k] if k.startswith(HANDLE) else 0) for k, n in before.items()}
    assert on_pds(home) == restored

    # The world's settings wait where any deployment's do, for `dagster dev` and its runs too
    # (test_dagster_cli: the code server gets them), readable by the user only (the PDS's admin password).
    settings = home.home / "settings.env"
    assert settings.stat().st_mode & 0o777 == 0o600
    assert f'PDS_URL="{world.pds_url}"' in settings.read_text().splitlines()

    # Explicit settings win over the saved world's: none of the file applies, and a line says so.
    ignored = f"{settings} not applied: the environment sets "
    one_line(home("status", extra={"PDS_URL": "http://127.0.0.1:9"}), "http://127.0.0.1:9", first=ignored)
    one_line(
        home(
            "status",
            extra={"MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"},
        ),
        "127.0.0.1:9",
        first=ignored + "MONGODB_CONNECTION_STRING otherwise",
    )

    # Down: every process of the world ends, and a command says how to bring it back.
    down = home("demo", "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not alive(world.pid) and not alive(world.pds_pid)
    one_line(home("sync"), "does not answer", f"PDS_URL: set in {settings}")
    assert "acpipeline demo up" in settings.read_text()  # the file says how to bring the world back
    assert home("demo", "status").returncode == 1

    # Up: a new PDS (the old one's accounts died with it), seeded again; a sync restores everything.
    up = home("demo", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert saved_world(home.home).pds_url != world.pds_url
    again = home("sync", "--json")
    assert again.returncode == 0, again.stderr
    assert on_pds(home) == before
