"""Runs that move between machines: with `ACPIPELINE_SHARED_STATE=mongodb` and `ACPIPELINE_CACHE_DIR` on a
shared volume, a run on a machine with an empty ACPIPELINE_HOME (a fresh container) neither logs in again nor
re-derives what another machine already derived, and proves converged what another machine synced.

"Machines" here are ACPIPELINE_HOMEs: two of them against one Dagster instance, one MongoDB (the embedded
store, which lives in a home's `mongo` folder: the second home links to the first's), one PDS (the real
reference PDS, behind a proxy that counts the requests by method) and real ffmpeg."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster._serdes import serialize_value

from acpipeline.demo.dataset import seed_dataset
from acpipeline.resources import shared_state
from acpipeline.sync import blobs, tape_blobs
from acpipeline.sync.marks import ConvergedState, Mark
from acpipeline.sync.runner import run_partitions

from .faultproxy import FaultProxy
from .helpers import sync
from .test_reliability import APPLY, LOGIN

DERIVE = {"painting_thumbnail": blobs, "encode_tape": tape_blobs}  # each where the blob stage calls it


@pytest.fixture
def shared(world, tmp_path, monkeypatch):
    """The shared settings of a deployment whose runs move between machines."""
    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, "mongodb")
    monkeypatch.setenv(shared_state.CACHE_DIR_ENV, str(tmp_path / "shared-cache"))
    yield world
    shared_state.close()


def _machine(world, monkeypatch, name: str) -> Path:
    """Another machine: an empty ACPIPELINE_HOME, with the one MongoDB."""
    home = world.home.parent / name
    home.mkdir()
    (home / "mongo").symlink_to(world.home / "mongo")
    monkeypatch.setenv("ACPIPELINE_HOME", str(home))
    return home


def _count_derivations(monkeypatch) -> dict[str, int]:
    """Thumbnails made and tapes encoded in this process (the test's runs are in-process); a broken ZIP's
    failed encode is not counted (a failure is not cached: every run tries it again)."""
    counts = dict.fromkeys(DERIVE, 0)
    for name, module in DERIVE.items():
        real = getattr(module, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            made = _real(*args, **kwargs)
            counts[_name] += 1
            return made

        monkeypatch.setattr(module, name, counting)
    return counts


def test_a_run_on_a_fresh_machine_neither_logs_in_nor_re_encodes(shared, monkeypatch):
    world = shared
    db = world.db()
    seed_dataset(db, world.media_root, world.create_account_unique, size="small")
    sessions = shared_state.collection(shared_state.SESSIONS)
    sessions.delete_many({})  # the sessions made with the accounts: machine A logs in as a run would
    derived = _count_derivations(monkeypatch)
    proxy = FaultProxy(world.pds_url).start()
    monkeypatch.setenv("PDS_URL", proxy.url)
    try:
        # Machine A: a full sync from nothing.
        started = time.monotonic()
        first = sync(world)
        a_seconds = time.monotonic() - started
        assert all(r.ok and r.check_passed for r in first.values()), [
            r.row() for r in first.values() if not (r.ok and r.check_passed)
        ]
        a_logins, a_derived = proxy.requests[LOGIN], dict(derived)
        accounts = {handle for (handle, _), r in first.items() if r.outcome.desired}
        assert a_logins == len(accounts) >= 3
        assert a_derived["encode_tape"] >= 2 and a_derived["painting_thumbnail"] >= 5, a_derived
        assert sessions.count_documents({}) == a_logins
        assert not (world.home / "sessions").exists()  # tokens in MongoDB only

        # Machine B, empty home: the quick path proves everything from A's marks, with no run at all.
        b_home = _machine(world, monkeypatch, "machine-b")
        before = proxy.requests.copy()
        derived.update(dict.fromkeys(DERIVE, 0))
        quick, _ = run_partitions(world.defs(), world.instance, None, None)
        skipped = {(r.handle, r.media) for r in quick if r.skipped}
        # The partitions A left with failed items (a missing image, a broken ZIP, ...) have no mark: run.
        assert skipped == {key for key, r in first.items() if r.clean} and len(skipped) >= 10
        assert len(quick) == len(first)
        assert proxy.requests[LOGIN] == before[LOGIN] and proxy.requests[APPLY] == before[APPLY]
        assert derived == dict.fromkeys(DERIVE, 0)

        # ... and a full sync there (every partition listed and reconciled) uses A's sessions and blobs.
        started = time.monotonic()
        second = sync(world)
        b_seconds = time.monotonic() - started
        assert all(r.ok and r.check_passed for r in second.values())
        assert all(r.outcome.created == r.outcome.updated == 0 for r in second.values())
        assert proxy.requests[LOGIN] == a_logins  # no login on machine B
        assert proxy.requests[APPLY] == before[APPLY]
        assert derived == dict.fromkeys(DERIVE, 0)  # no thumbnail made, no tape encoded again
        assert not (b_home / "sessions").exists() and not (b_home / "derived.sqlite").exists()

        # For comparison, machine C shares the sessions and marks but not the cache: what it rebuilds.
        monkeypatch.delenv(shared_state.CACHE_DIR_ENV)
        _machine(world, monkeypatch, "machine-c")
        started = time.monotonic()
        third = sync(world)
        c_seconds = time.monotonic() - started
        assert all(r.ok for r in third.values()) and proxy.requests[LOGIN] == a_logins
        assert derived == a_derived  # everything A derived, again
    finally:
        proxy.stop()

    # The tokens are in MongoDB, and in none of the runs' Dagster events.
    tokens = {t for doc in sessions.find({}) for t in (doc["accessJwt"], doc["refreshJwt"])}
    passwords = {u["atproto"]["password"] for u in db["users"].find({"atproto.password": {"$exists": True}})}
    assert len(tokens) == 2 * a_logins
    events = b"".join(
        serialize_value(event).encode()
        for run in world.instance.get_runs()
        for event in world.instance.all_logs(run.run_id)
    )
    assert b"pds_holds_desired_records" in events and b"proven_converged" in events  # the scan sees them
    assert [s[:6] for s in tokens | passwords if s.encode() in events] == []
    print(
        f"\nFIGURES two machines: A logged in {a_logins} times, derived {a_derived} in a {a_seconds:.1f} s "
        f"full sync; B (empty home) logged in 0 times and derived nothing, full sync {b_seconds:.1f} s; "
        f"C (no shared cache) derived {derived} again, full sync {c_seconds:.1f} s"
    )


@pytest.mark.parametrize("where", ["local", "mongodb"])
def test_marks_behave_the_same_in_sqlite_and_mongodb(where, tmp_path, monkeypatch):
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("MONGODB_CONNECTION_STRING", raising=False)
    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, where)
    did, mark = "did:plc:marks", Mark("fp", 3)
    state = ConvergedState(tmp_path)
    try:
        state.mark(did, "3aaaaaaaaaaa2", "mood", mark)
        state.mark(did, "3aaaaaaaaaaa2", "piece", Mark("fp2", 1))
        assert state.valid_marks(did, "3aaaaaaaaaaa2") == {"mood": mark, "piece": Mark("fp2", 1)}
        state.advance(did, "3aaaaaaaaaaa2", "3aaaaaaaaaaa4", "piece")  # our write to pieces
        assert state.valid_marks(did, "3aaaaaaaaaaa4") == {"mood": mark}
        state.mark(did, "3aaaaaaaaaaa2", "piece", Mark("old", 1))  # stale: a newer commit is known
        state.unmark(did, "mood")
        assert state.load(did) == ("3aaaaaaaaaaa4", {})
        state.advance(did, "3aaaaaaaaaaa5", "3aaaaaaaaaaa6", "mood")  # a commit we did not see: all lapse
        assert state.load_many([did, "did:plc:none"]) == {did: ("3aaaaaaaaaaa6", {})}
    finally:
        state.close()
        shared_state.close()
    assert (tmp_path / "converged.sqlite").exists() == (where == "local")


@pytest.mark.parametrize("where", ["local", "mongodb"])
def test_a_late_mark_holds_across_our_commits_to_other_collections(where, tmp_path, monkeypatch):
    """A mark is saved after its partition's links are written; meanwhile another run of ours may commit to
    the same account. The mark holds if every commit since its check was ours to another collection."""
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("MONGODB_CONNECTION_STRING", raising=False)
    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, where)
    did, kidlisp, painting = "did:plc:late", Mark("k", 2220), Mark("p", 395)
    state = ConvergedState(tmp_path)
    try:
        state.advance(did, "3aaaaaaaaaaa1", "3aaaaaaaaaaa2", "kidlisp")  # kidlisp's last commit, checked at 2
        state.advance(did, "3aaaaaaaaaaa2", "3aaaaaaaaaaa3", "painting")  # the paintings run goes on
        state.advance(did, "3aaaaaaaaaaa3", "3aaaaaaaaaaa4", "painting")
        state.mark(did, "3aaaaaaaaaaa2", "kidlisp", kidlisp)  # kidlisp's links written: its mark, late
        state.mark(did, "3aaaaaaaaaaa4", "painting", painting)
        assert state.valid_marks(did, "3aaaaaaaaaaa4") == {"kidlisp": kidlisp, "painting": painting}
        state.advance(did, "3aaaaaaaaaaa4", "3aaaaaaaaaaa5", "mood")
        state.mark(did, "3aaaaaaaaaaa3", "painting", Mark("old", 1))  # a painting commit since: stale
        state.mark(did, "3aaaaaaaaaaa1", "mood", Mark("old", 1))  # no commit of ours from 1 known: stale
        assert state.valid_marks(did, "3aaaaaaaaaaa5") == {"kidlisp": kidlisp, "painting": painting}
        state.advance(
            did, "3aaaaaaaaaaa6", "3aaaaaaaaaaa7", "mood"
        )  # a commit we did not see: the chain ends
        state.mark(did, "3aaaaaaaaaaa5", "kidlisp", kidlisp)
        assert state.load(did) == ("3aaaaaaaaaaa7", {})
    finally:
        state.close()
        shared_state.close()


def test_marks_saved_before_steps_were_kept_carry_over(tmp_path):
    with sqlite3.connect(tmp_path / "converged.sqlite") as old:
        old.execute("CREATE TABLE marks(did TEXT PRIMARY KEY, rev TEXT, marks TEXT)")
        old.execute("INSERT INTO marks VALUES ('did:plc:old', '3aaaaaaaaaaa2', '{\"mood\": [\"fp\", 3, 0]}')")
    old.close()
    state = ConvergedState(tmp_path)
    try:
        assert state.load("did:plc:old") == ("3aaaaaaaaaaa2", {"mood": Mark("fp", 3)})
        state.advance("did:plc:old", "3aaaaaaaaaaa2", "3aaaaaaaaaaa3", "piece")
        state.mark("did:plc:old", "3aaaaaaaaaaa2", "kidlisp", Mark("k", 1))
        assert state.valid_marks("did:plc:old", "3aaaaaaaaaaa3") == {
            "mood": Mark("fp", 3),
            "kidlisp": Mark("k", 1),
        }
    finally:
        state.close()
    assert ConvergedState(tmp_path).load("did:plc:old")[0] == "3aaaaaaaaaaa3"  # a second open changes nothing


THROTTLE_READER = """
import sys, time
from acpipeline.resources.pds import Throttle
print(Throttle(sys.argv[1]).not_before())
"""


def test_the_throttle_reaches_runs_on_other_machines(tmp_path, monkeypatch):
    """A 429 seen on one machine holds back the runs of another (a process with its own empty home)."""
    monkeypatch.delenv("MONGODB_CONNECTION_STRING", raising=False)
    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, "mongodb")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv("ACPIPELINE_HOME", str(a))
    from acpipeline.resources.pds import Throttle

    until = time.time() + 30
    try:
        Throttle("https://user:secret@pds.example").hold(until)
        Throttle("https://pds.example").hold(until - 10)  # an earlier time never shortens the pause
    finally:
        shared_state.close()
    (b / "mongo").symlink_to(a / "mongo")
    env = {**os.environ, "ACPIPELINE_HOME": str(b)}
    read = subprocess.run(
        [sys.executable, "-c", THROTTLE_READER, "https://pds.example"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(read.stdout) == pytest.approx(until)
    assert not (a / "throttle").exists() and not (b / "throttle").exists()
