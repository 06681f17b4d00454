"""The PDS as production may configure it: Bluesky's reference PDS with its rate limits on (3,000 requests per
5 minutes per IP, 5,000 write points an hour per account) and a bypass key (its `PDS_RATE_LIMIT_BYPASS_KEY`).
With ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY set to that key every call carries it in `x-ratelimit-bypass`, and
the PDS neither limits nor counts it: a sync past the hour's write points finishes in one run. The key never
reaches the event log, a run's logs, the CLI's output or a message; and `acpipeline doctor` says whether the
PDS applies limits, whether the key gets past them, and how long the backlog's sync takes under them."""

from __future__ import annotations

import json
import logging
import os
import secrets
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from acpipeline.errors import OperatorError
from acpipeline.localpds import server as localpds
from acpipeline.resources.pds import PdsClient, PdsError, _session_path, rate_limit_status
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV, RATELIMIT_BYPASS_HEADER

from .helpers import add_moods
from .oracle import listed_over_http
from .test_cli import cli
from .test_security import _files, _hits

DESCRIBE = "com.atproto.server.describeServer"
MOOD = "computer.aesthetic.mood"
# 5,100 write points (3 a create): more than the 5,000 an hour the PDS allows one account.
MOODS = 1_700


@pytest.fixture(scope="module")
def limited() -> Iterator[localpds.LocalPds]:
    """The reference PDS with its rate limits on and a bypass key, for this module (a fresh one: its per-IP
    window and every account's write points start untouched)."""
    key = "bypass-" + secrets.token_urlsafe(24)
    with localpds.start(rate_limits=True, rate_limit_bypass_key=key, log=lambda *_: None) as pds:
        yield pds


def key_of(pds: localpds.LocalPds) -> str:
    assert pds.rate_limit_bypass_key
    return pds.rate_limit_bypass_key


def add_limited_user(client: PdsClient, db, name: str) -> tuple[str, str, str]:
    """A MongoDB user with a fresh account on the limited PDS; returns (sub, handle, did)."""
    handle = f"{name}{secrets.token_hex(3)}.at.aesthetic.computer"
    password = secrets.token_urlsafe(16)
    did = client.create_account(handle, password, f"{handle}@example.com")
    sub = f"auth0|{name}{secrets.token_hex(4)}"
    db["users"].insert_one(
        {"_id": sub, "code": name[:4], "atproto": {"did": did, "handle": handle, "password": password}}
    )
    return sub, handle, did


def test_a_call_carrying_the_key_is_neither_limited_nor_counted(limited, monkeypatch):
    """What the reference PDS does with the key, through our client: the answer to a call carrying it has no
    `ratelimit-*` headers and the per-IP allowance does not go down; a wrong key is counted like no key."""
    before = rate_limit_status(httpx.get(f"{limited.url}/xrpc/{DESCRIBE}").headers)
    assert before is not None and (before.limit, before.window_s) == (3000, 300.0), before
    monkeypatch.setenv(RATELIMIT_BYPASS_ENV, key_of(limited))
    with_key = PdsClient(limited.url)  # the key from the environment, as every command and run reads it
    wrong = PdsClient(limited.url, ratelimit_bypass_key="wrong-" + secrets.token_urlsafe(12))
    try:
        assert with_key.has_bypass_key
        keyed = [rate_limit_status(with_key.send("GET", DESCRIBE).headers) for _ in range(20)]
        plain = rate_limit_status(with_key.send("GET", DESCRIBE, bypass_limits=False).headers)
        refused = rate_limit_status(wrong.send("GET", DESCRIBE).headers)
    finally:
        with_key.close()
        wrong.close()
    assert keyed == [None] * 20
    assert key_of(limited) not in repr(limited)
    assert plain is not None and refused is not None
    if plain.reset == before.reset == refused.reset:  # the same 5-minute window (it started at `before`)
        assert (plain.remaining, refused.remaining) == (before.remaining - 1, before.remaining - 2)
    print(
        f"\nFIGURES bypass key: 20 calls with it carried no ratelimit headers; allowance "
        f"{before.remaining} -> {plain.remaining} (next call without it) -> {refused.remaining} (wrong key)"
    )


def test_a_sync_with_the_key_goes_past_the_hours_write_points_and_the_key_is_nowhere(
    world, limited, monkeypatch
):
    """1,700 creates (5,100 points, over the 5,000 an hour) in one run through the CLI with the key set: all
    written and linked, nothing deferred. Then every file under DAGSTER_HOME (the event log and the runs'
    logs, SQLite tables decompressed) and ACPIPELINE_HOME, and everything `sync`, `status` and `doctor`
    printed, is searched for the key; a failed login's exception is among what is searched."""
    key = key_of(limited)
    db = world.db()
    client = PdsClient(limited.url, ratelimit_bypass_key=key)
    sub, handle, did = add_limited_user(client, db, "bypass")
    locked_sub, locked, locked_did = add_limited_user(client, db, "locked")
    client.close()
    add_moods(db, sub, [f"mood {i}" for i in range(MOODS)])
    add_moods(db, locked_sub, ["locked out"])
    db["users"].update_one(
        {"_id": locked_sub}, {"$set": {"atproto.password": "Wr0ng-" + secrets.token_hex(8)}}
    )
    _session_path(locked_did).unlink()  # its session saved at creation would still open: make it log in
    monkeypatch.setenv("PDS_URL", limited.url)
    monkeypatch.setenv(RATELIMIT_BYPASS_ENV, key)
    monkeypatch.setenv("ACPIPELINE_PDS_RETRY_BUDGET_S", "5")  # without the key: deferred at once, no wait

    synced = cli("sync", "--media", "mood", "--json", timeout=600)
    again = cli("sync", "--media", "mood", "--full")
    status = cli("status", "--handle", handle)
    doctor = cli("doctor")

    rows = {row["handle"]: row for row in json.loads(synced.stdout)["partitions"]}
    assert rows[handle]["created"] == MOODS and not rows[handle]["deferred_until"], rows[handle]
    assert rows[handle]["check_passed"] is True
    assert f"login as {locked_did} failed" in rows[locked]["error"], rows[locked]
    assert synced.returncode == 1 and again.returncode == 1 and status.returncode == 0
    assert db["moods"].count_documents({"user": sub, "atproto.rkey": {"$exists": True}}) == MOODS
    assert len(listed_over_http(limited.url, did, MOOD)) == MOODS

    dagster_home = Path(os.environ["DAGSTER_HOME"])
    scanned = {f"dagster_home/{k}": v for k, v in _files(dagster_home).items()}
    scanned |= {f"acpipeline_home/{k}": v for k, v in _files(world.home).items()}
    for name, result in (
        ("sync --json", synced),
        ("sync --full", again),
        ("status", status),
        ("doctor", doctor),
    ):
        scanned[f"{name} output"] = (result.stdout + result.stderr).encode()
    everything = b"".join(scanned.values())
    # The scan sees the runs' event logs, with the failed login's exception in them, and the doctor's verdict.
    assert did.encode() in everything and f"login as {locked_did} failed".encode() in everything
    assert b"ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY gets past them" in scanned["doctor output"]
    hits = _hits({key}, scanned)
    assert hits == [], hits
    print(
        f"\nFIGURES rate limits on, with the bypass key: {MOODS} creates ({3 * MOODS} points) in one run, "
        f"none deferred; the key in none of {len(scanned)} files and outputs"
    )


def test_the_doctor_says_whether_the_key_gets_past_the_limits_and_how_long_the_backlog_takes(
    world, limited, monkeypatch
):
    key = key_of(limited)
    db = world.db()
    client = PdsClient(limited.url, ratelimit_bypass_key=key)
    sub, handle, _ = add_limited_user(client, db, "backlog")
    client.close()
    add_moods(db, sub, [f"mood {i}" for i in range(MOODS)])
    monkeypatch.setenv("PDS_URL", limited.url)
    monkeypatch.delenv(RATELIMIT_BYPASS_ENV, raising=False)
    wrong_key = "wrong-" + secrets.token_urlsafe(12)

    without = cli("doctor")
    with_key = cli("doctor", env={RATELIMIT_BYPASS_ENV: key})
    wrong = cli("doctor", env={RATELIMIT_BYPASS_ENV: wrong_key})

    backlog = f"a full sync of the backlog ({MOODS:,} writes, 10 requests)"  # 1 session, 9 writes
    line = limits_line(without)
    assert without.returncode == 0 and line.startswith("WARN "), line
    assert "the PDS applies rate limits (3000 requests / 300 s per IP" in line
    assert f"under the PDS's limits (3000 requests / 300 s per IP), {backlog} takes at least 60 min" in line
    assert f"5,100 write points of {handle} at 5,000 an hour" in line and RATELIMIT_BYPASS_ENV in line

    line = limits_line(with_key)
    assert with_key.returncode == 0 and line.startswith("ok "), line
    assert f"{RATELIMIT_BYPASS_ENV} gets past them" in line and f"{backlog} is not limited" in line

    line = limits_line(wrong)
    assert wrong.returncode == 1 and line.startswith("FAIL "), line
    assert f"{RATELIMIT_BYPASS_ENV} does not get past them" in line and "PDS_RATE_LIMIT_BYPASS_KEY" in line
    assert f"{backlog} takes at least 60 min" in line
    for result in (without, with_key, wrong):
        assert key not in result.stdout + result.stderr and wrong_key not in result.stdout + result.stderr
    print(f"\nFIGURES doctor, rate limits on, no key: {limits_line(without)}")


def limits_line(result) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["limits"]]
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_every_call_carries_the_key_and_no_message_log_or_repr_does(monkeypatch, caplog, tmp_path):
    """Every kind of call (a login, a write, an upload, a refused one) carries the header, except the
    doctor's probe without it; the key is in no exception, traceback, debug log of httpx or repr."""
    key = "bypass-" + secrets.token_urlsafe(24)
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv(RATELIMIT_BYPASS_ENV, f"  {key}\n")  # as a file or a shell may hand it over
    seen: list[tuple[str, str | None]] = []

    def pds(request: httpx.Request) -> httpx.Response:
        nsid = request.url.path.removeprefix("/xrpc/")
        seen.append((nsid, request.headers.get(RATELIMIT_BYPASS_HEADER)))
        if nsid == "com.atproto.server.createSession":
            tokens = {"accessJwt": "a.b.c", "refreshJwt": "d.e.f"}
            return httpx.Response(200, json={"did": "did:plc:x", "handle": "x.test", **tokens})
        if nsid == "com.atproto.repo.getRecord":
            return httpx.Response(400, json={"error": "InvalidRequest", "message": "no such record"})
        return httpx.Response(200, json={"blob": {}} if nsid.endswith("uploadBlob") else {})

    client = PdsClient("http://pds.invalid", retry_budget_s=1)
    client.http.close()
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(pds))
    caplog.set_level(logging.DEBUG)
    session = client.session("did:plc:x", "password")
    client.apply_writes(session, b'{"repo": "did:plc:x", "writes": []}')
    client.upload_blob(session, b"png", "image/png")
    client.send("GET", DESCRIBE, bypass_limits=False)
    with pytest.raises(PdsError) as refused:
        client.call("GET", "com.atproto.repo.getRecord", params={"repo": "did:plc:x"})
    client.close()
    assert seen == [
        ("com.atproto.server.createSession", key),
        ("com.atproto.repo.applyWrites", key),
        ("com.atproto.repo.uploadBlob", key),
        (DESCRIBE, None),
        ("com.atproto.repo.getRecord", key),
    ]
    text = "".join(traceback.format_exception(refused.value)) + repr(refused.value) + caplog.text
    assert "no such record" in text and "HTTP Request" in caplog.text  # what is searched is there
    assert key not in text + repr(client)

    monkeypatch.setenv(RATELIMIT_BYPASS_ENV, f"caf\u00e9-{key}")  # no header can carry it
    with pytest.raises(OperatorError) as unusable:
        PdsClient("http://pds.invalid")
    assert RATELIMIT_BYPASS_ENV in str(unusable.value) and key not in str(unusable.value)
    monkeypatch.setenv(RATELIMIT_BYPASS_ENV, "")
    assert not PdsClient("http://pds.invalid").has_bypass_key


def test_the_upload_limit_holds_uploads_only_not_every_call(world):
    """With its limits on, the PDS allows 1,000 uploads a day per IP: once they are spent, its 429 (reset a
    day away) must defer the partitions that need a blob, not stop the records that need none."""
    from acpipeline.resources.pds import RateLimited

    from .faultproxy import FaultProxy
    from .helpers import add_user

    db = world.db()
    sub, _, did = add_user(world, db, "uploader")
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    with FaultProxy(world.pds_url, retry_after=86_400) as proxy:
        proxy.hooks.append(lambda seen: "429" if seen.nsid == "com.atproto.repo.uploadBlob" else None)
        client = PdsClient(proxy.url, retry_budget_s=2)
        session = client.session(did, password)
        with pytest.raises(RateLimited):
            client.upload_blob(session, b"\x89PNG not really", "image/png")
        assert client.list_records(did, "computer.aesthetic.mood") == []  # not held for a day
        body = json.dumps({"repo": did, "writes": []}).encode()
        client.apply_writes(session, body)  # nor are the account's record writes
        with pytest.raises(RateLimited):  # the next upload waits for the reset without asking again
            client.upload_blob(session, b"\x89PNG not really", "image/png")
        assert proxy.requests["com.atproto.repo.uploadBlob"] == 1
        client.close()
