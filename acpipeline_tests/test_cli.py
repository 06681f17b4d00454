"""The command line as an operator meets it: help, JSON shapes, and one plain line for a wrong setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acpipeline.errors import OperatorError
from acpipeline.localpds import server as localpds

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acpipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=timeout,
    )


def test_help_lists_the_commands():
    out = cli("--help").stdout
    for command in ("pds", "demo", "sync", "status"):
        assert command in out


def one_plain_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_pds_url_that_does_not_answer(world):
    result = cli("status", env={"PDS_URL": "http://127.0.0.1:9", "DAGSTER_HOME": str(world.home / "dh")})
    one_plain_line(result, "http://127.0.0.1:9", "PDS_URL")


def test_missing_pds_url(world):
    env = {k: v for k, v in os.environ.items() if k != "PDS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "acpipeline.cli", "status"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    one_plain_line(result, "PDS_URL is not set")


def test_unreachable_mongodb(world):
    result = cli(
        "status", env={"MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=500"}
    )
    one_plain_line(result, "127.0.0.1:9", "MONGODB_CONNECTION_STRING")


def test_demo_refuses_a_real_database(world):
    result = cli("demo", "--seed-only", env={"MONGODB_CONNECTION_STRING": "mongodb://db.example:27017"})
    one_plain_line(result, "MONGODB_CONNECTION_STRING is set")


def test_node_absent_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(OperatorError, match="npm not found"):
        localpds._npm()


def test_status_json_against_the_real_pds(world):
    from acpipeline.demo.dataset import seed_dataset

    seed_dataset(world.db(), world.media_root, world.create_account_unique, size="small")
    assert cli("sync", "--moods-only", "--json").returncode == 0
    rows = json.loads(cli("status", "--json").stdout)
    assert {"handle", "media", "desired", "on_pds"} <= set(rows[0])
    moods = [r for r in rows if r["media"] == "mood"]
    assert moods and all(r["desired"] == r["on_pds"] for r in moods)
    assert any(r["on_pds"] == 0 < r["desired"] for r in rows if r["media"] == "piece")


def test_sync_shows_progress_totals_and_quiet_summaries(world):
    from acpipeline.demo.dataset import seed_dataset

    summary = seed_dataset(world.db(), world.media_root, world.create_account_unique, size="small")
    # Not a terminal: plain progress lines on stderr (every 0 s here instead of every 30).
    first = cli("sync", env={"ACPIPELINE_PROGRESS_SECONDS": "0"})
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    progress = [line for line in first.stderr.splitlines() if line.startswith("progress: ")]
    assert progress and all(" partitions, " in line and "records written" in line for line in progress)
    out = first.stdout.splitlines()
    assert any(line.rstrip().endswith("nothing to sync") for line in out)  # oldtimer's empty partitions
    accounts = len(summary.handles_with_accounts)
    total = summary.records_expected_total
    assert out[-1].startswith(f"synced {accounts} accounts, {accounts * 6} partitions (")
    assert f": {total} created, 0 updated, 0 deleted, 4 failed items, in " in out[-1]

    quiet = cli("sync", "--quiet")
    lines = [line for line in quiet.stdout.splitlines() if line.strip()]
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert lines[-1].startswith(f"synced {accounts} accounts") and "0 created" in lines[-1]
    assert all(line.startswith("  failed ") for line in lines[:-1]) and len(lines) == 5, quiet.stdout

    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "per account:" in status.stdout
    assert (
        status.stdout.strip().splitlines()[-1].startswith(f"{accounts} accounts: {total + 4} items to mirror")
    )


BAD_SETTINGS = {
    "a PDS that does not answer": {"PDS_URL": "http://127.0.0.1:9"},
    "an unreachable MongoDB": {
        "MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    },
    "a MongoDB port out of range": {"MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:99999/"},
    "a storage host that does not answer": {"ACPIPELINE_IMAGE_URL": "http://127.0.0.1:9/{bucket}/{key}"},
}
COMMANDS = [
    ("sync",),
    ("sync", "--handle", "nobody.test"),
    ("sync", "--media", "paintings"),
    ("status",),
    ("wipe", "--handle", "nobody.test", "--yes"),
    ("lexicons", "check"),
]


def test_no_command_answers_a_bad_setting_with_a_traceback(world):
    """Every command with each wrong setting: a plain `acpipeline: ...` line (or the command's own one-line
    report), a non-zero exit, never a Python traceback."""
    world.client.create_account("nobody0.test", "pw-nobody-0", "nobody0@example.com")  # a PDS with data
    for setting, env in BAD_SETTINGS.items():
        for command in COMMANDS:
            result = cli(*command, env=env, timeout=120)
            said = result.stdout + result.stderr
            assert "Traceback" not in said, (setting, command, said)
            # A storage host that does not answer fails items, not the command (there is nothing to fetch
            # here); the PDS and MongoDB settings end every command.
            if "STORAGE" not in str(env) and "IMAGE_URL" not in str(env):
                assert result.returncode != 0, (setting, command, said)
            errors = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(errors) <= 1, (setting, command, result.stderr)
            if "MONGODB" in str(env) and "--media" not in command:  # named by the setting to fix
                assert "MONGODB_CONNECTION_STRING" in result.stderr, (setting, command, said)


def test_demo_names_a_pds_that_refuses_its_handles(world):
    from acpipeline.demo.environment import create_demo_account

    with pytest.raises(OperatorError, match=r"does not accept handles under \.example\.org.*unset PDS_URL"):
        create_demo_account(world.client, "jeffrey.example.org", "pw-jeffrey-1", "jeffrey@example.com")
