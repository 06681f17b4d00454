"""The command line as an operator meets it: help, JSON shapes, and one plain line for a wrong setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acpipeline.errors import OperatorError
from acpipeline.localpds import server as localpds

from .helpers import add_moods, add_user
from .test_reliability import add_paintings

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


def _outcome(result: subprocess.CompletedProcess) -> tuple[int, str, str]:
    """Exit status and output, the run ids they name left out."""
    runs = re.compile(r"\(run [0-9a-f-]{36}\)")
    return result.returncode, runs.sub("(run)", result.stdout), runs.sub("(run)", result.stderr)


UNREACHABLE_IMAGE_URL = "http://127.0.0.1:9/{bucket}/{user}/painting/{slug}.png"  # a valid template, no host
BAD_SETTINGS = {
    "a PDS that does not answer": {"PDS_URL": "http://127.0.0.1:9"},
    "an unreachable MongoDB": {
        "MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    },
    "a MongoDB port out of range": {"MONGODB_CONNECTION_STRING": "mongodb://127.0.0.1:99999/"},
    "a storage host that does not answer": {"ACPIPELINE_IMAGE_URL": UNREACHABLE_IMAGE_URL},
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
    report), never a Python traceback; a non-zero exit for the PDS and MongoDB settings, and for a storage
    host that does not answer (which none of these commands asks for anything) the same outcome as with the
    storage that answers."""
    world.client.create_account("nobody0.test", "pw-nobody-0", "nobody0@example.com")  # a PDS with data
    as_configured = {command: cli(*command, timeout=120) for command in COMMANDS}
    for setting, env in BAD_SETTINGS.items():
        for command in COMMANDS:
            result = cli(*command, env=env, timeout=120)
            said = result.stdout + result.stderr
            assert "Traceback" not in said, (setting, command, said)
            if "ACPIPELINE_IMAGE_URL" in env:
                # A storage host is only asked for an item's file, and there is none here: every command
                # ends exactly as it does with the storage that answers (see the next test for items).
                assert _outcome(result) == _outcome(as_configured[command]), (setting, command, said)
            else:  # the PDS and MongoDB settings end every command
                assert result.returncode != 0, (setting, command, said)
            errors = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(errors) <= 1, (setting, command, result.stderr)
            if "MONGODB" in str(env) and "--media" not in command:  # named by the setting to fix
                assert "MONGODB_CONNECTION_STRING" in result.stderr, (setting, command, said)


def test_demo_names_a_pds_that_refuses_its_handles(world):
    from acpipeline.demo.environment import create_demo_account

    with pytest.raises(OperatorError, match=r"does not accept handles under \.example\.org.*unset PDS_URL"):
        create_demo_account(world.client, "jeffrey.example.org", "pw-jeffrey-1", "jeffrey@example.com")


def _painter(world) -> tuple[str, str, list[str]]:
    """A user with two paintings (their PNGs in the world's storage) and a mood: (handle, did, their refs)."""
    db = world.db()
    sub, handle, did = add_user(world, db, "storehost")
    add_moods(db, sub, ["still syncs"])
    return handle, did, [str(ref) for ref in add_paintings(world, db, sub, 2)]


def test_a_storage_host_that_does_not_answer_fails_the_items_not_the_command(world):
    handle, did, paintings = _painter(world)
    result = cli("sync", "--handle", handle, env={"ACPIPELINE_IMAGE_URL": UNREACHABLE_IMAGE_URL})
    said = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in said, said
    failed = [line.split() for line in result.stdout.splitlines() if line.startswith("  failed ")]
    assert sorted(line[3].rstrip(":") for line in failed) == sorted(paintings), result.stdout
    for line in failed:  # each painting failed, naming the host that did not answer
        assert line[1:3] == [handle, "painting"] and " ".join(line[4:7]) == "storage unreachable for", line
        assert line[7].startswith("127.0.0.1:9/"), line
    assert ": 1 created, 0 updated, 0 deleted, 2 failed items, in " in result.stdout.splitlines()[-1]
    moods = world.client.list_records(did, "computer.aesthetic.mood")
    paintings_on_pds = world.client.list_records(did, "computer.aesthetic.painting")
    assert (len(moods), len(paintings_on_pds)) == (1, 0), (moods, paintings_on_pds)


def test_a_storage_template_with_an_unknown_placeholder_is_named(world):
    handle, _, _ = _painter(world)
    result = cli(
        "sync", "--handle", handle, env={"ACPIPELINE_IMAGE_URL": "http://127.0.0.1:9/{bucket}/{key}"}
    )
    said = result.stdout + result.stderr
    assert "Traceback" not in said and "ACPIPELINE_IMAGE_URL" in said, said
