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
