"""`acpipeline doctor` as an operator runs it (a subprocess), against the real local PDS, the embedded store
and the demo media server: every check ok on a healthy world, then one broken setting at a time, named on
its own line, with exit status 1 and no traceback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time

import httpx
import pytest
from dagster._daemon.types import DaemonHeartbeat

from acpipeline.demo.dataset import seed_dataset
from acpipeline.instance import get_instance
from acpipeline.operations.doctor.limits import PartitionBacklog, estimate_sync
from acpipeline.operations.doctor.services import check_dagster, check_ffmpeg
from acpipeline.resources.pds import RateLimitStatus, rate_limit_status
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV
from acpipeline.settings import ART_GUEST_ID, ART_HANDLE
from acpipeline.sync.extract import find_accounts

from .test_cli import cli

CHECKS = ["mongodb", "pds", "state", "accounts", "limits", "storage", "ffmpeg", "dagster"]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def seeded(world):
    """The small demo dataset: users with accounts (the art account too), paintings, tapes, news."""
    seed_dataset(world.db(), world.media_root, world.create_account_unique, size="small")
    return world


def lines_by_check(result: subprocess.CompletedProcess) -> dict[str, str]:
    """Each check's line, by its name; no traceback anywhere."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    by_check = {line.split()[1]: line for line in lines[:-1]}
    assert list(by_check) == CHECKS, result.stdout
    return by_check


def passwords(world) -> list[str]:
    return [account.password for account in find_accounts(world.db()).by_handle.values()]


def test_a_healthy_world_passes_every_check(seeded):
    result = cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_check(result)
    for check in ("mongodb", "pds", "accounts", "limits", "storage", "state", "ffmpeg"):
        assert lines[check].startswith("ok "), lines[check]
    assert "under ACPIPELINE_HOME (this machine only)" in lines["state"]
    assert "7 of 7 collections" in lines["mongodb"] and "users with accounts" in lines["mongodb"]
    assert seeded.pds_url in lines["pds"] and "blobUploadLimit 5,242,880 bytes" in lines["pds"]
    assert "3 of " in lines["accounts"] and ART_HANDLE in lines["accounts"]
    assert "painting image, anonymous painting image and tape ZIP answer" in lines["storage"]
    # The session's PDS runs without its limits (dev mode); the seeded dataset is not synced yet.
    assert "the PDS applies no rate limits (no ratelimit-* headers on describeServer)" in lines["limits"]
    assert "a full sync of the backlog (" in lines["limits"] and "requests) is not limited" in lines["limits"]
    # No daemon runs here: a warning, not a failure.
    assert lines["dagster"].startswith("WARN ") and "SQLite" in lines["dagster"]
    assert result.stdout.strip().splitlines()[-1] == "all 8 checks passed (1 with a warning)"
    assert not any(password in result.stdout + result.stderr for password in passwords(seeded))

    as_json = cli("doctor", "--json", "--sample", "1")
    assert as_json.returncode == 0, as_json.stderr
    results = json.loads(as_json.stdout)
    assert [r["check"] for r in results] == CHECKS
    assert all(set(r) == {"check", "ok", "status", "detail"} and r["ok"] for r in results)
    assert results[3]["detail"].startswith("1 of ") and ART_HANDLE in results[3]["detail"]

    key = f"bypass-{secrets.token_urlsafe(12)}"
    with_key = cli("doctor", env={RATELIMIT_BYPASS_ENV: key})
    limits = lines_by_check(with_key)["limits"]
    assert with_key.returncode == 0 and limits.startswith("ok "), limits
    assert f"{RATELIMIT_BYPASS_ENV} is set, with nothing to bypass" in limits
    assert key not in with_key.stdout + with_key.stderr


def test_shared_state_in_mongodb_and_a_cache_dir_that_cannot_be_written(seeded, tmp_path):
    shared = cli("doctor", env={"ACPIPELINE_SHARED_STATE": "mongodb", "ACPIPELINE_CACHE_DIR": str(tmp_path)})
    state = lines_by_check(shared)["state"]
    assert shared.returncode == 0 and state.startswith("ok ") and "in MongoDB" in state, state
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    broken = cli("doctor", env={"ACPIPELINE_CACHE_DIR": str(not_a_folder / "cache")})
    state = lines_by_check(broken)["state"]
    assert broken.returncode == 1 and state.startswith("FAIL ") and "ACPIPELINE_CACHE_DIR" in state, state
    wrong = cli("doctor", env={"ACPIPELINE_SHARED_STATE": "postgres"})
    lines = lines_by_check(wrong)
    assert wrong.returncode == 1 and "'mongodb' or 'local'" in lines["state"], wrong.stdout
    assert lines["accounts"].startswith("skip ")


def test_a_pds_url_that_does_not_answer(seeded):
    result = cli("doctor", env={"PDS_URL": CLOSED})
    assert result.returncode == 1
    lines = lines_by_check(result)
    assert lines["mongodb"].startswith("ok ")
    assert lines["pds"].startswith("FAIL ") and CLOSED in lines["pds"] and "PDS_URL" in lines["pds"]
    assert lines["accounts"].startswith("skip ") and "pds" in lines["accounts"]
    assert lines["storage"].startswith("ok ")


def test_a_refused_login_names_the_handle_and_not_the_password(seeded):
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    seeded.db()["users"].update_one({"_id": ART_GUEST_ID}, {"$set": {"atproto.password": wrong}})
    # The art account's session saved at its creation would still open: make the doctor log in.
    shutil.rmtree(seeded.home / "sessions")
    result = cli("doctor")
    assert result.returncode == 1
    lines = lines_by_check(result)
    assert lines["accounts"].startswith("FAIL ")
    assert ART_HANDLE in lines["accounts"] and "atproto.password" in lines["accounts"]
    assert lines["pds"].startswith("ok ") and lines["mongodb"].startswith("ok ")
    for password in [wrong, *passwords(seeded)]:
        assert password not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (CLOSED + "/{bucket}/{user}/painting/{slug}.png", "storage unreachable for 127.0.0.1:9/"),
        (CLOSED + "/{bucket}/{key}", "has the placeholder {key}, which storage URLs do not fill"),
        (
            CLOSED.replace("://", "://reader:hunter2-secret@") + "/{bucket}/{user}/painting/{slug}.png",
            "storage unreachable for 127.0.0.1:9/",
        ),
    ],
    ids=["closed-port", "unknown-placeholder", "credentials-in-the-url"],
)
def test_a_storage_template_that_does_not_work(seeded, template, reason):
    result = cli("doctor", env={"ACPIPELINE_IMAGE_URL": template})
    assert result.returncode == 1
    lines = lines_by_check(result)
    assert lines["storage"].startswith("FAIL ") and "ACPIPELINE_IMAGE_URL" in lines["storage"]
    assert reason in lines["storage"]
    assert all(lines[check].startswith("ok ") for check in ("mongodb", "pds", "accounts", "ffmpeg"))
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_a_storage_credential_in_a_working_url_stays_out_of_the_lines(seeded):
    """Storage behind basic auth: httpx sends the URL's user:password, the doctor's line names the host."""
    variables = ("ACPIPELINE_IMAGE_URL", "ACPIPELINE_GUEST_IMAGE_URL", "ACPIPELINE_ZIP_URL")
    env = {name: os.environ[name].replace("://", "://reader:hunter2-secret@") for name in variables}
    result = cli("doctor", env=env)
    storage = lines_by_check(result)["storage"]
    assert storage.startswith("ok ") and "(at 127.0.0.1:" in storage, storage
    assert "hunter2-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "connection_string",
    ["mongodb://ops:hunter2-secret@127.0.0.1:99999/", "mongodb://ops:hunter2-secret@127.0.0.1:9/"],
    ids=["malformed", "unreachable"],
)
def test_a_mongodb_connection_string_that_does_not_work(world, connection_string):
    result = cli("doctor", env={"MONGODB_CONNECTION_STRING": connection_string})
    assert result.returncode == 1
    lines = lines_by_check(result)
    assert lines["mongodb"].startswith("FAIL ") and "MONGODB_CONNECTION_STRING" in lines["mongodb"]
    assert lines["accounts"].startswith("skip ") and lines["storage"].startswith("skip ")
    assert lines["pds"].startswith("ok ")
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_an_ffmpeg_that_is_not_there(monkeypatch, tmp_path):
    monkeypatch.setenv("FFMPEG_BINARY", str(tmp_path / "ffmpeg"))
    result = check_ffmpeg()
    assert result.status == "fail" and "FFMPEG_BINARY" in result.detail


def test_the_daemon_is_running_while_its_heartbeats_are_recent(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert check_dagster().status == "warn"
    instance = get_instance()
    # What `dagster-daemon run` writes every 30 s, three hours ago, then now.
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 3 * 3600, "SENSOR", "daemon"))
    stopped = check_dagster()
    assert stopped.status == "warn" and "3 h ago" in stopped.detail
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SENSOR", "daemon"))
    running = check_dagster()
    assert running.status == "ok" and "daemon running" in running.detail


def test_rate_limit_headers_are_read_as_the_reference_pds_sends_them():
    headers = {
        "RateLimit-Limit": "3000",
        "RateLimit-Remaining": "2999",
        "RateLimit-Reset": "1796529730",
        "RateLimit-Policy": "3000;w=300",
    }
    assert rate_limit_status(httpx.Headers(headers)) == RateLimitStatus(3000, 2999, 1796529730.0, 300.0)
    assert rate_limit_status({}) is None  # not limited, or not counted (the bypass key)
    assert rate_limit_status({"ratelimit-limit": "3000", "ratelimit-remaining": "inf"}) is None
    assert rate_limit_status(
        {"ratelimit-limit": "5", "ratelimit-remaining": "1", "ratelimit-policy": "5"}
    ) == (RateLimitStatus(5, 1, 0.0, None))


def backlog(handle: str, creates: int, blobs: int = 0, media: str = "mood") -> PartitionBacklog:
    return PartitionBacklog(handle, media, creates, blobs)


@pytest.mark.parametrize(
    ("parts", "requests", "seconds", "bound"),
    [
        ([], 0, 0.0, ""),
        # The bench's heavy user: 8,601 points, more than the hour's 5,000: the second hour is waited for.
        (
            [backlog("heavy", 2867)],
            1 + 15,  # a session, applyWrites of 200 (getRepo, the reads, the PDS does not count)
            3600.0,
            "8,601 write points of heavy at 5,000 an hour",
        ),
        # 4,000 accounts of one create each: 8,000 requests, three 5-minute windows.
        ([backlog(f"u{i}", 1) for i in range(4000)], 8_000, 600.0, "8,000 requests at 3,000 per 300 s"),
        # 2,500 paintings, a thumbnail each: 1,000 uploads a day per IP.
        (
            [backlog("painter", 2500, blobs=2500, media="painting")],
            1 + 13 + 2500,
            2 * 86400.0,
            "2,500 blob uploads at 1,000 a day",
        ),
        # 12,000 creates: 36,000 points, over the day's 35,000 (the hour's alone would be 7 hours).
        (
            [backlog("prolific", 12_000)],
            1 + 60,
            86400.0,
            "36,000 write points of prolific at 35,000 a day",
        ),
        # Two partitions of one account: one session, their points added up.
        (
            [backlog("both", 1000), backlog("both", 1000, media="kidlisp")],
            1 + 10,
            3600.0,
            "6,000 write points of both at 5,000 an hour",
        ),
    ],
    ids=["nothing", "heavy-user", "many-accounts", "uploads", "day-points", "one-account-two-media"],
)
def test_the_estimate_of_a_full_sync_under_the_pds_limits(parts, requests, seconds, bound):
    estimate = estimate_sync(parts, 3000, 300.0)
    assert (estimate.writes, estimate.requests) == (sum(p.creates for p in parts), requests)
    assert (estimate.seconds, estimate.bound) == (seconds, bound)
    full_sync = f"a full sync of the backlog ({estimate.writes:,} writes, {requests:,} requests)"
    takes = f"takes at least {_words(seconds)} ({bound})" if seconds else "fits within them"
    assert estimate.line() == f"under the PDS's limits (3000 requests / 300 s per IP), {full_sync} {takes}"
    unlimited = estimate_sync(parts, None)
    assert (unlimited.requests, unlimited.seconds) == (requests, 0.0)
    assert unlimited.line() == f"{full_sync} is not limited"


def _words(seconds: float) -> str:
    return {600.0: "10 min", 3600.0: "60 min", 900.0: "15 min", 86400.0: "24.0 h", 172800.0: "2.0 days"}[
        seconds
    ]
