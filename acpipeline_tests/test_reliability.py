"""Reliability against the real reference PDS: retries through injected faults, lost write answers,
shared throttling, SIGKILL at chosen moments followed by a re-run, and bad input that fails one item only.

Faults come from `FaultProxy` in front of the real PDS (never a fake PDS): tests start it in front of
`pds_url` and point `PDS_URL` at it before `world.defs()`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from dagster import Definitions, in_process_executor
from PIL import Image

from acpipeline.core.media import MEDIA
from acpipeline.core.tid import clock_id_for
from acpipeline.definitions import build_resources
from acpipeline.errors import OperatorError
from acpipeline.localpds.server import free_port
from acpipeline.resources.pds import PdsClient, PdsError, _load_session, _session_path
from acpipeline.resources.storage import FetchProblem, StorageResource
from acpipeline.sync.assets import atproto_records, media_blobs, source_items
from acpipeline.sync.links import FLUSH_AT
from acpipeline.sync.runner import run_partitions

from .faultproxy import FaultProxy, Rule, StubStorage
from .helpers import T0, add_moods, add_user, records, sync
from .oracle import (
    Storage,
    assert_mirrored,
    blob_bytes_match_cid,
    expected_moods,
    expected_paintings,
    tid_micros_and_clock,
    when_micros,
)

PROJECT = Path(__file__).resolve().parents[1]
APPLY = "com.atproto.repo.applyWrites"
UPLOAD = "com.atproto.repo.uploadBlob"
LIST = "com.atproto.repo.listRecords"
GET_REPO = "com.atproto.sync.getRepo"
LOGIN = "com.atproto.server.createSession"
REFRESH = "com.atproto.server.refreshSession"
USER_BUCKET = "user-aesthetic-computer"


# -- world helpers (also used by test_security) --------------------------------------------------------


def tiny_png(seed: int, size: int = 12) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGBA", (size, size))
    pixels = [(rng.randrange(256), rng.randrange(256), rng.randrange(256), 255) for _ in range(size * size)]
    img.putdata(pixels)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def add_paintings(world, db, sub: str, count: int, start: int = 0) -> list[ObjectId]:
    """Owned paintings whose PNGs the media server holds."""
    ids = []
    for i in range(start, start + count):
        when = T0 + timedelta(days=1, seconds=i)
        slug = when.strftime("%Y.%m.%d.%H.%M.%S.000")
        path = world.media_root / USER_BUCKET / sub / "painting" / f"{slug}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tiny_png(i))
        doc = {"_id": ObjectId(), "user": sub, "code": f"p{i:03d}", "slug": slug, "bucket": USER_BUCKET}
        db["paintings"].insert_one({**doc, "when": when})
        ids.append(doc["_id"])
    return ids


ORACLE_MEDIA = {  # media -> (collection, NSID)
    "mood": ("moods", "computer.aesthetic.mood"),
    "painting": ("paintings", "computer.aesthetic.painting"),
}


def expected_by_oracle(world, db, sub: str, media: str) -> dict[str, dict[str, Any]]:
    """What one clean run must leave on the PDS, by the oracle that shares no code with the sync (the
    MongoDB documents, the spec's mapping, and storage as the media server serves it): ref -> value."""
    if media == "mood":
        return expected_moods(db, sub)
    if media == "painting":
        return expected_paintings(db, sub, Storage(world.media.url))
    raise ValueError(f"the oracle has no {media} records")


def assert_converged(world, db, handle: str, media: list[str]) -> Counter[str]:
    """Exactly the state of one clean run: one record per wanted item at its deterministic key with the
    value the oracle expects (the whole value, every field and nothing else; a painting's thumbnail blob
    served by the PDS, named by its bytes' CID, the painting fitted in 512x512), and MongoDB's links naming
    exactly those records. Returns duplicates found (per media)."""
    user = db["users"].find_one({"atproto.handle": handle})
    sub, did = user["_id"], user["atproto"]["did"]
    duplicates: Counter[str] = Counter()
    for name in media:
        collection, nsid = ORACLE_MEDIA[name]
        want = expected_by_oracle(world, db, sub, name)
        listed = assert_mirrored(world.pds_url, db, did, collection, nsid, want, exact=True)
        refs = Counter(r["value"].get("ref") for r in listed)
        duplicates[name] = sum(n - 1 for n in refs.values())
        docs = {str(doc["_id"]): doc for doc in db[collection].find({"user": sub})}
        for record in listed:
            ref = record["value"]["ref"]
            rkey = record["uri"].rsplit("/", 1)[-1]
            # The item's TID: its `when` in microseconds (milliseconds kept) and a clock id hashed from its
            # `_id`; or, when another item of the same instant and clock id took it (clock ids are 10 bits),
            # the same clock id a few microseconds later.
            got_micros, got_clock_id = tid_micros_and_clock(rkey)
            micros = when_micros(docs[ref]["when"])
            assert got_clock_id == clock_id_for(ref) and 0 <= got_micros - micros < 10, (name, ref, rkey)
            link = docs[ref]["atproto"]
            assert (link["rkey"], link["uri"], link["cid"]) == (rkey, record["uri"], record["cid"]), ref
        stray = db[collection].count_documents({"user": sub, "atproto.rkey": {"$exists": True}})
        assert stray == len(listed), (name, stray, len(listed))
    return duplicates


def assert_rerun_writes_nothing(world, handle: str, media: list[str]) -> None:
    again = sync(world, [handle], media)
    for result in again.values():
        meta = result.outcome
        assert result.ok and result.check_passed, result.row()
        writes = (meta.created, meta.updated, meta.deleted, meta.commits, meta.mongo_updates)
        assert writes == (0, 0, 0, 0, 0), result.row()
        assert meta.blobs_uploaded == 0, result.row()


def step_error(world, run_id: str) -> str:
    """The message of the exception that failed the run's step (beneath Dagster's own wrapper)."""
    for record in world.instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type_value == "STEP_FAILURE":
            info = event.event_specific_data.error
            while info.cause is not None and info.cls_name.startswith("Dagster"):
                info = info.cause
            return info.message
    raise AssertionError(f"run {run_id} has no step failure")


def fake_jwt(exp: int) -> str:
    """A JWT-shaped token with the given expiry; the PDS refuses it (InvalidToken)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'at+jwt'})}.{part({'exp': exp, 'scope': 'x'})}.c2lnbmF0dXJl"


def expire_access(did: str) -> str:
    """Make the persisted session's access token expired (its refresh token stays good); returns the old
    refresh token."""
    session = _load_session(did)
    assert session is not None
    refresh = session.refresh
    path = _session_path(did)
    data = json.loads(path.read_text())
    data["accessJwt"] = fake_jwt(1)
    path.write_text(json.dumps(data))
    return refresh


@pytest.fixture
def proxy_for(world, monkeypatch):
    """Start a FaultProxy in front of the real PDS and point PDS_URL at it (for the defs built after)."""
    started: list[FaultProxy] = []

    def start(*rules: Rule, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(world.pds_url, list(rules), **kwargs).start()
        started.append(proxy)
        monkeypatch.setenv("PDS_URL", proxy.url)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


# -- retries through injected faults -------------------------------------------------------------------

WRITES = frozenset({APPLY, UPLOAD, LOGIN, REFRESH})
FAULTS = [
    Rule("429", 0.04),
    Rule("500", 0.06),
    Rule("502", 0.06),
    Rule("drop", 0.06),
    Rule("reset", 0.03),
    Rule("502_after", 0.12, WRITES),
    Rule("drop_after", 0.12, WRITES),
    Rule("500_after", 0.05, WRITES),
]


def test_sync_through_injected_faults_lands_every_record_exactly_once(world, proxy_for):
    db = world.db()
    sub_a, handle_a, did_a = add_user(world, db, "faulty")
    sub_b, handle_b, did_b = add_user(world, db, "flaky")
    add_moods(db, sub_a, [f"mood {i}" for i in range(450)])  # three applyWrites batches
    add_moods(db, sub_b, [f"other {i}" for i in range(230)])
    add_paintings(world, db, sub_a, 5)
    add_paintings(world, db, sub_b, 3, start=50)
    _session_path(did_a).unlink()  # a login (createSession) through the faults
    expire_access(did_b)  # a session refresh through the faults
    # Random faults everywhere, plus two lost applyWrites answers for sure.
    proxy = proxy_for(*FAULTS, seed=6, script={(APPLY, 2): "drop_after", (APPLY, 4): "502_after"})

    results = sync(world, [handle_a, handle_b], ["painting", "mood"])

    for result in results.values():
        assert result.ok and result.check_passed, result.row()
        meta = result.outcome
        # Lost answers are settled from the fresh listing: every record counted once as created.
        assert meta.created == meta.desired and meta.failed == 0, result.row()
    assert results[(handle_a, "mood")].outcome.desired == 450
    injected = proxy.faults_by_kind()
    assert set(injected) == {f.kind for f in FAULTS}, injected  # every kind was met and survived
    assert sum(proxy.faults[(k, APPLY)] for k in ("502_after", "drop_after", "500_after")) >= 2
    assert proxy.requests[LOGIN] >= 1 and proxy.requests[REFRESH] >= 1
    proxy.active = False
    for handle in (handle_a, handle_b):
        assert_converged(world, db, handle, ["painting", "mood"])
        assert_rerun_writes_nothing(world, handle, ["painting", "mood"])
    print(f"\nFIGURES faults injected and survived: {dict(injected)}; by method: {dict(proxy.faults)}")


def test_lost_write_answers_are_replanned_never_duplicated(world, proxy_for):
    """The PDS applies a batch but the answer is lost (502, dropped connection), then a batch really fails:
    each time the sync re-plans from a fresh listing instead of re-sending."""
    db = world.db()
    sub, handle, did = add_user(world, db, "lost")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])
    proxy = proxy_for(script={(APPLY, 1): "502_after", (APPLY, 2): "drop_after", (APPLY, 3): "500"})

    result = sync(world, [handle], ["mood"])[(handle, "mood")]

    assert result.ok and result.check_passed, result.row()
    meta = result.outcome
    assert meta.replans == 3
    assert (meta.created, meta.unchanged) == (450, 0)
    assert meta.commits == 1  # only the last batch was answered: 200 + 200 applied unseen, 50 seen
    assert proxy.requests[APPLY] == 4
    assert assert_converged(world, db, handle, ["mood"])["mood"] == 0
    assert_rerun_writes_nothing(world, handle, ["mood"])


@pytest.mark.parametrize(("fault", "uploads"), [("500", 8), ("502_after", 4)])
def test_blobs_are_uploaded_again_when_a_replan_needs_them(world, proxy_for, fault, uploads):
    """A batch refused before applying (500) leaves its uploaded blobs unreferenced: the re-plan uploads
    them again. A batch applied unseen (502 after) references them: nothing is uploaded twice."""
    db = world.db()
    sub, handle, did = add_user(world, db, "blobby")
    add_paintings(world, db, sub, 4)
    get_blob = "com.atproto.sync.getBlob"
    proxy = proxy_for(script={(APPLY, 1): fault, (get_blob, 1): "502", (get_blob, 2): "drop"})

    result = sync(world, [handle], ["painting"])[(handle, "painting")]

    assert result.ok and result.check_passed, result.row()
    assert proxy.requests[UPLOAD] == uploads
    assert result.outcome.replans == 1 and result.outcome.created == 4
    client = PdsClient(proxy.url)  # getBlob is retried like every other call
    for record in records(world, did, "computer.aesthetic.painting"):
        cid = record["value"]["thumbnail"]["ref"]["$link"]
        assert blob_bytes_match_cid(client.get_blob(did, cid), cid)  # the PDS holds every referenced blob
    assert proxy.requests[get_blob] == 6
    assert_converged(world, db, handle, ["painting"])


def test_pds_that_keeps_failing_ends_with_what_was_tried(world, proxy_for):
    proxy = proxy_for(Rule("502", 1.0, frozenset({LIST})), max_in_a_row=10**6)
    client = PdsClient(proxy.url, retry_budget_s=1.5)
    with pytest.raises(PdsError) as failure:
        client.list_records("did:plc:nobody", "computer.aesthetic.mood")
    message = str(failure.value)
    assert message.startswith(f"{LIST} failed after ") and "HTTP 502 UpstreamFailure x" in message
    assert proxy.requests[LIST] >= 3  # it did retry, with backoff, until the budget ran out


def test_writes_that_keep_failing_give_up_and_the_next_run_converges(world, proxy_for):
    db = world.db()
    sub, handle, did = add_user(world, db, "stubborn")
    add_moods(db, sub, [f"mood {i}" for i in range(30)])
    proxy = proxy_for(Rule("502", 1.0, frozenset({APPLY})), max_in_a_row=10**6)

    failed = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert not failed.ok
    cause = step_error(world, failed.run_id)
    assert "4 applyWrites calls in a row" in cause and "HTTP 502 UpstreamFailure; outcome unknown" in cause
    assert proxy.requests[APPLY] == 4  # the first try and three re-plans, never a blind re-send

    proxy.active = False
    again = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert again.ok and again.check_passed
    assert assert_converged(world, db, handle, ["mood"])["mood"] == 0


def test_read_timeouts_are_retried(world, proxy_for):
    db = world.db()
    sub, handle, did = add_user(world, db, "slowpoke")
    proxy = proxy_for(script={(LIST, 1): "stall"}, stall_s=1.5)
    client = PdsClient(proxy.url, timeout_s=0.5)
    assert len(client.list_records(did, "computer.aesthetic.mood")) == 0
    assert proxy.requests[LIST] == 2 and proxy.faults[("stall", LIST)] == 1


def test_refused_connection_is_an_operator_error_only_before_the_pds_ever_answered(world, proxy_for):
    proxy = proxy_for()
    with pytest.raises(OperatorError, match="does not answer"):
        PdsClient(f"http://127.0.0.1:{free_port()}", retry_budget_s=1).describe_server()

    client = PdsClient(proxy.url, retry_budget_s=1.5)
    client.describe_server()
    proxy.stop()  # the PDS (here: the proxy) goes away mid-run: retried as a transient failure
    with pytest.raises(PdsError, match=r"describeServer failed after \d+ attempts .*ConnectError"):
        client.describe_server()


def test_login_and_refresh_are_retried(world, proxy_for):
    db = world.db()
    sub, handle, did = add_user(world, db, "session")
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    proxy = proxy_for(
        script={
            (LOGIN, 1): "500",
            (LOGIN, 2): "drop_after",
            (REFRESH, 1): "502",
            (REFRESH, 2): "drop_after",  # the PDS rotated the token; the retry is within its grace period
        }
    )
    _session_path(did).unlink()
    session = PdsClient(proxy.url).session(did, password)
    assert proxy.requests[LOGIN] == 3 and session.did == did

    old_refresh = expire_access(did)
    refreshed = PdsClient(proxy.url).session(did, password)
    assert proxy.requests[REFRESH] == 3
    assert refreshed.refresh != old_refresh and _load_session(did).access == refreshed.access

    # An access token the PDS refuses mid-run is refreshed once; a refused refresh token means a new login.
    client = PdsClient(proxy.url)
    stale = client.session(did, password)
    stale.access = stale.refresh = fake_jwt(4_000_000_000)
    me = client.call("GET", "com.atproto.server.getSession", session=stale)
    assert me["did"] == did and stale.access != fake_jwt(4_000_000_000)
    assert proxy.requests[LOGIN] == 4 and proxy.requests[REFRESH] == 4
    assert _load_session(did).access == stale.access


# -- throttle ------------------------------------------------------------------------------------------


class Sleeps(list):
    """A sleep that only records: the tests see how long a client chose to wait, without waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_accounts_log_in_once_while_dagster_starts_and_a_failed_login_is_the_run_s_to_report(
    world, proxy_for
):
    db = world.db()
    sub, handle, did = add_user(world, db, "ahead")
    bad_sub, bad_handle, bad_did = add_user(world, db, "wrongpw")
    db["users"].update_one({"_id": bad_sub}, {"$set": {"atproto.password": "not-the-password"}})
    add_moods(db, sub, ["one", "two"])
    add_moods(db, bad_sub, ["three"])
    for account in (did, bad_did):
        _session_path(account).unlink(missing_ok=True)
    proxy = proxy_for()
    results = sync(world, [handle, bad_handle], ["mood"])
    assert results[(handle, "mood")].clean and len(records(world, did, "computer.aesthetic.mood")) == 2
    assert _load_session(did) is not None and _load_session(bad_did) is None
    bad = results[(bad_handle, "mood")]
    assert not bad.ok and f"login as {bad_did} failed" in bad.error
    # One login ahead for each account; the run reused the good session and tried the bad one once more.
    assert proxy.requests[LOGIN] == 3


def test_429_pauses_every_client_of_that_pds_in_this_and_other_processes(world, proxy_for):
    proxy = proxy_for(script={("com.atproto.server.describeServer", 1): "429"}, retry_after=30)
    first = Sleeps()
    PdsClient(proxy.url, sleep=first).describe_server()
    assert proxy.requests["com.atproto.server.describeServer"] == 2
    assert 30 <= first[0] < 32  # it waited out retry-after before trying again

    # Another client in this process waits too, before its first request.
    second = Sleeps()
    PdsClient(proxy.url, sleep=second).describe_server()
    assert second and 20 < second[0] <= 32

    # So does another process (concurrent Dagster runs): within a short budget it refuses to call at all.
    script = (
        "import sys\n"
        "from acpipeline.resources.pds import PdsClient, PdsError\n"
        "try:\n"
        f"    PdsClient({proxy.url!r}, retry_budget_s=5).describe_server()\n"
        "except PdsError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    before = proxy.requests["com.atproto.server.describeServer"]
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT)
    assert child.returncode == 3, child.stderr
    assert "asked clients to slow down" in child.stdout
    assert proxy.requests["com.atproto.server.describeServer"] == before  # not one request sent

    # A client of another PDS is not slowed down.
    other = Sleeps()
    PdsClient(world.pds_url, sleep=other).describe_server()
    assert other == []


def test_remaining_allowance_near_zero_paces_the_next_calls(world, proxy_for):
    remaining = {"value": 500}

    def headers(nsid: str) -> dict[str, str]:
        reset = int(datetime.now(UTC).timestamp()) + 40
        return {
            "ratelimit-limit": "3000",
            "ratelimit-remaining": str(remaining["value"]),
            "ratelimit-reset": str(reset),
        }

    proxy = proxy_for(rate_headers=headers)
    sleeps = Sleeps()
    client = PdsClient(proxy.url, sleep=sleeps)
    client.describe_server()
    client.describe_server()
    assert sleeps == []  # plenty left: no pause
    remaining["value"] = 1
    client.describe_server()
    client.describe_server()
    assert len(sleeps) == 1 and 10 < sleeps[0] < 22  # one call left in a 40 s window: wait about half


# -- crash safety: SIGKILL, then a re-run ----------------------------------------------------------------


def _mood_writes(seen) -> bool:
    return seen.nsid == APPLY and seen.json()["writes"][0]["collection"] == "computer.aesthetic.mood"


KILL_POINTS = {
    # name: (phase, predicate on the running count of matching requests)
    "first repository read, before anything": ("before", GET_REPO, 1),
    "blob uploaded, its record not written": ("after", UPLOAD, 2),
    "before the first mood write": ("before", "mood-writes", 1),
    "between mood batches": ("before", "mood-writes", 2),
    "mood batch applied, answer lost": ("after", "mood-writes", 2),
    "last batch applied, before write-back": ("after", "mood-writes", 3),
    "random request (seed 1)": ("random", 1, 0),
    "random request (seed 2)": ("random", 2, 0),
}


def _kill_group(pgid: int) -> None:
    """SIGKILL the sync and every worker it forked (as a dying machine would), and return once all are dead
    (zombies, reaped later by Popen), so none can see the proxy's answer to the request being handled."""
    os.killpg(pgid, signal.SIGKILL)
    for _ in range(500):
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive = True
                break
        if not alive:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"process group {pgid} did not die")


def _cli(handle: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "acpipeline.cli", "sync", "--handle", handle, "--media", "painting,mood"],
        cwd=PROJECT,
        env=dict(os.environ),  # the world's: ACPIPELINE_HOME, DAGSTER_HOME, PDS_URL (the proxy), storage
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a kill takes its forked workers too
    )


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Its output once it ends; past `timeout` its whole group is killed and the test fails."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise AssertionError(f"the sync did not finish within {timeout:.0f} s") from None


def kill_sync_at(world, proxy: FaultProxy, handle: str, point: str) -> None:
    """Run the CLI sync through the proxy and SIGKILL its process group at the kill point."""
    phase, what, n = KILL_POINTS[point]
    target = random.Random(what).randrange(1, 17) if phase == "random" else n  # a run makes ~17 calls
    seen_count: Counter[str] = Counter()
    killed = threading.Event()
    holder: dict[str, subprocess.Popen] = {}

    def hook(seen) -> str | None:
        if killed.is_set() or "proc" not in holder:
            return None
        if phase == "random":
            if seen.phase != "before":
                return None
            seen_count["all"] += 1
            hit = seen_count["all"] == target
        else:
            matches = _mood_writes(seen) if what == "mood-writes" else seen.nsid == what
            if not matches or seen.phase != phase:
                return None
            seen_count[what] += 1
            hit = seen_count[what] == target
        if not hit:
            return None
        killed.set()
        _kill_group(holder["proc"].pid)
        return "drop"

    proxy.hooks.append(hook)
    holder["proc"] = proc = _cli(handle)
    _finish(proc, timeout=240)
    proxy.hooks.remove(hook)
    assert killed.is_set() and proc.returncode == -signal.SIGKILL, (point, proc.returncode)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_any_point_then_a_rerun_converges_to_one_clean_run(world, proxy_for, point):
    db = world.db()
    sub, handle, did = add_user(world, db, "crash")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])  # three applyWrites batches
    add_paintings(world, db, sub, 4)
    proxy = proxy_for()
    kill_sync_at(world, proxy, handle, point)
    at_kill = len(records(world, did, "computer.aesthetic.mood"))
    if point == "between mood batches":
        assert at_kill == 200
    if point == "last batch applied, before write-back":
        # a run gathers its partitions' links (sync/links.py: up to FLUSH_AT, then at the end) and writes them
        # before it counts a partition done: killed here, none of the 450 is linked yet, and the re-run links
        # them from the PDS's listing without writing them again
        linked = db["moods"].count_documents({"atproto.rkey": {"$exists": True}})
        assert at_kill == 450 and linked == 0 < FLUSH_AT - at_kill

    # The re-run: the same command on the same Dagster instance (it releases the killed runs' slots).
    rerun = _cli(handle)
    out, err = _finish(rerun, timeout=180)
    assert rerun.returncode == 0, (out, err)
    duplicates = assert_converged(world, db, handle, ["painting", "mood"])
    assert sum(duplicates.values()) == 0
    # and by the oracle that shares no code with the sync
    assert_mirrored(world.pds_url, db, did, "moods", "computer.aesthetic.mood", expected_moods(db, sub))
    painted = expected_paintings(db, sub)
    assert_mirrored(world.pds_url, db, did, "paintings", "computer.aesthetic.painting", painted)
    assert_rerun_writes_nothing(world, handle, ["painting", "mood"])
    print(f"\nFIGURES kill point {point!r}: {at_kill} mood records at kill, converged, 0 duplicates")


def test_a_killed_sync_does_not_block_the_next_one(world, proxy_for, monkeypatch):
    db = world.db()
    sub, handle, did = add_user(world, db, "blocked")
    add_moods(db, sub, [f"mood {i}" for i in range(20)])
    add_paintings(world, db, sub, 2)
    monkeypatch.setenv("ACPIPELINE_SYNC_WORKERS", "2")  # both partitions at once, as on any 2+ core host
    proxy = proxy_for()
    both_writing = threading.Event()
    holder: dict[str, subprocess.Popen] = {}

    def hook(seen) -> str | None:
        # Hold the painting write until the mood write arrives: both record steps hold a pool slot. Kill.
        if seen.nsid != APPLY or seen.phase != "before" or "proc" not in holder:
            return None
        if not _mood_writes(seen):
            both_writing.wait(60)
            return "drop"
        both_writing.set()
        _kill_group(holder["proc"].pid)
        return "drop"

    proxy.hooks.append(hook)
    holder["proc"] = proc = _cli(handle)
    _finish(proc, timeout=240)
    assert both_writing.is_set() and proc.returncode == -signal.SIGKILL
    proxy.hooks.remove(hook)

    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    dead = {run.run_id for run in instance.get_runs()}
    rerun = _cli(handle)
    try:
        # Blocked for good (no timing involved): a step of the new run waits for a slot while every
        # claimed slot belongs to a run of the killed process, which can never release it.
        while rerun.poll() is None:
            info = instance.event_log_storage.get_concurrency_info("pds_writes")
            holders = {slot.run_id for slot in info.claimed_slots}
            waiting = [s for s in info.pending_steps if s.run_id not in dead and s.assigned_timestamp is None]
            assert not (waiting and len(holders) >= info.slot_count and holders <= dead), (
                f"the new run waits for a pds_writes slot held by the killed runs {sorted(holders)}"
            )
            threading.Event().wait(0.5)
    finally:
        if rerun.poll() is None:
            _kill_group(rerun.pid)
        out, err = rerun.communicate()
        instance.dispose()
    assert rerun.returncode == 0, (out, err)


# -- bad input: one failed item each, the rest syncs -----------------------------------------------------


def test_bad_documents_fail_one_item_each_with_a_reason(world):
    """Every kind of broken document is a failed item with a clear reason, and the good ones sync.

    Over-long texts are REJECTED, never truncated: a cut mood says something else and a cut KidLisp
    program is a different program (usually not even a valid one). The lexicon's maxLength counts UTF-8
    bytes, so 2,000 four-byte emoji (8,000 bytes) are over a 5,000 limit although only 2,000 characters.
    """
    db = world.db()
    sub, handle, did = add_user(world, db, "garbage")
    when = T0 + timedelta(hours=1)

    def insert(collection: str, **fields) -> str:
        doc = {"_id": ObjectId(), "user": sub, **fields}
        db[collection].insert_one(doc)
        return str(doc["_id"])

    good = {
        "mood": insert("moods", mood="fine", when=when),
        "mood at the limit": insert("moods", mood="é" * 2500, when=when),  # 5,000 bytes exactly
        "piece": insert("pieces", slug="wand", when=when, code="w", bucket=USER_BUCKET),
        "kidlisp at the limit": insert("kidlisp", code="lim", source="x" * 50_000, when=when),
    }
    bad = {
        "mood not a string": (insert("moods", mood=b"bytes", when=when), "mood is not a string"),
        "mood of multi-byte text": (
            insert("moods", mood="\U0001f600" * 2000, when=when),
            "invalid record: mood: maxLength 5000 UTF-8 bytes (has 8000)",
        ),
        "mood without when": (insert("moods", mood="timeless"), "when is missing"),
        "when as a number": (insert("moods", mood="epoch", when=1_700_000_000_000), ", not a date"),
        "when in the far future": (
            insert("moods", mood="future", when=datetime(2400, 1, 1, tzinfo=UTC)),
            "when 2400-01-01T00:00:00+00:00 is outside",
        ),
        "piece without slug": (insert("pieces", when=when, code="p", bucket=USER_BUCKET), "slug is missing"),
        "piece with a null slug": (insert("pieces", slug=None, when=when), "slug is missing"),
        "kidlisp without code": (insert("kidlisp", source="(wipe)", when=when), "code is missing"),
        "kidlisp with a numeric code": (
            insert("kidlisp", code=42, source="(ink)", when=when),
            "code is not a string",
        ),
        "kidlisp code over 10 characters": (
            insert("kidlisp", code="abcdefghijk", source="(box)", when=when),
            "invalid record: code: maxLength 10",
        ),
        "kidlisp over 50,000 characters": (
            insert("kidlisp", code="big", source="(wipe blue)\n" * 4200, when=when),
            "invalid record: source: maxLength 50000",
        ),
        "painting without code": (
            insert("paintings", slug="2024.1.1.1.1.1.000", bucket=USER_BUCKET, when=when),
            "code is missing",
        ),
    }
    results = sync(world, [handle], ["mood", "piece", "kidlisp", "painting"])
    assert all(r.ok and r.check_passed for r in results.values()), [r.row() for r in results.values()]
    reasons = {f["ref"]: f["reason"] for r in results.values() for f in r.row()["failed_items"]}
    for name, (ref, reason) in bad.items():
        assert reason in reasons.get(ref, ""), (name, reasons.get(ref))
    assert len(reasons) == len(bad)

    on_pds = {
        r["value"]["ref"]: r["value"]
        for nsid in ("computer.aesthetic.mood", "computer.aesthetic.piece", "computer.aesthetic.kidlisp")
        for r in records(world, did, nsid)
    }
    assert set(on_pds) == set(good.values())
    assert on_pds[good["kidlisp at the limit"]]["source"] == "x" * 50_000  # whole, not cut
    assert not any(v.get("code") == "big" for v in on_pds.values())  # rejected, not truncated
    print(f"\nFIGURES bad documents tried end to end: {len(bad)} (all failed items, {len(good)} good synced)")


@pytest.mark.parametrize(
    ("field", "media"),
    [("mood", "mood"), ("source", "kidlisp"), ("code", "kidlisp"), ("slug", "piece"), ("code", "painting")],
)
def test_lone_surrogates_are_a_failed_item(field, media):
    """Invalid Unicode (a lone surrogate, which UTF-8 cannot encode). The embedded store refuses to store
    one (it BSON-encodes strictly), as real MongoDB does, so this is checked where a document becomes an
    item: a driver decoding with a lenient error handler could still hand one over."""
    doc = {
        "_id": ObjectId(),
        "user": "auth0|u",
        "when": T0,
        "mood": "ok",
        "source": "(wipe)",
        "code": "c",
        "slug": "s",
        "bucket": USER_BUCKET,
    }
    doc[field] = "bad \ud83d here"
    item = MEDIA[media].normalise(doc)
    assert item.problem == f"{field} holds invalid Unicode (lone surrogate at 4)"


def test_the_embedded_store_refuses_lone_surrogates(world):
    with pytest.raises(UnicodeEncodeError):
        world.db()["moods"].insert_one({"_id": ObjectId(), "mood": "bad \ud83d"})


def _bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, format="PNG")
    return out.getvalue()


def test_bad_images_and_misbehaving_storage_fail_one_painting_each(world, monkeypatch):
    db = world.db()
    sub, handle, did = add_user(world, db, "painter")
    good = add_paintings(world, db, sub, 2)
    images = {
        "not a png": b"GIF89a" + b"\x00" * 100,
        "truncated png": tiny_png(7)[:60],
        "decompression bomb": _bomb_png(),
        "storage 500": tiny_png(8),
        "storage stalls": tiny_png(9),
        "storage trickles": tiny_png(10),
        "storage redirects": tiny_png(11),
        "missing": None,
    }
    behaviours = {
        "storage-500": "500",
        "storage-stalls": "stall",
        "storage-trickles": "trickle",
        "storage-redirects": "redirect:http://127.0.0.1:9/elsewhere.png",
    }
    ids = {}
    for i, (name, data) in enumerate(images.items()):
        slug = name.replace(" ", "-")
        if data is not None:
            path = world.media_root / USER_BUCKET / sub / "painting" / f"{slug}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        doc = {"_id": ObjectId(), "user": sub, "code": f"b{i}", "slug": slug, "bucket": USER_BUCKET}
        db["paintings"].insert_one({**doc, "when": T0 + timedelta(hours=i)})
        ids[name] = str(doc["_id"])
    with StubStorage(world.media_root, behaviours, stall_s=5) as storage:
        resources = build_resources()
        templates = storage.url_templates()
        resources["storage"] = StorageResource(
            image_url=templates["image_url"],
            guest_image_url=templates["guest_image_url"],
            zip_url=templates["zip_url"],
            timeout_s=1.0,
            deadline_s=2.0,
            retry_wait_s=0.1,
        )
        defs = Definitions(
            assets=[source_items, media_blobs, atproto_records],
            resources=resources,
            executor=in_process_executor,
        )
        results, _ = run_partitions(defs, world.instance, [handle], ["painting"], full=True)
    result = results[0]
    assert result.ok and result.check_passed, result.row()
    reasons = {f["ref"]: f["reason"] for f in result.row()["failed_items"]}
    expected = {
        "not a png": "image is not a PNG",
        "truncated png": "image cannot be decoded",
        "decompression bomb": "too large to decode",
        "storage 500": "storage answered 500",
        "storage stalls": "storage too slow",
        "storage trickles": "storage too slow",
        "storage redirects": "storage answered 302",
        "missing": "storage answered 404",
    }
    for name, reason in expected.items():
        assert reason in reasons.get(ids[name], ""), (name, reasons.get(ids[name]))
    assert "(3 attempts)" in reasons[ids["storage 500"]]  # 5xx is retried a little, then fails the item
    assert len(reasons) == len(expected)
    assert {r["value"]["ref"] for r in records(world, did, "computer.aesthetic.painting")} == {
        str(g) for g in good
    }
    print(f"\nFIGURES bad images / storage behaviours tried end to end: {len(expected)}")


def test_trickling_storage_cannot_hold_a_fetch_forever(tmp_path):
    with StubStorage(tmp_path, {"slow": "trickle"}) as storage:
        resource = StorageResource(timeout_s=1.0, deadline_s=1.0)
        with pytest.raises(FetchProblem, match=r"storage too slow .* bytes in 1 s"):
            resource.fetch(f"{storage.url}/slow.png")
