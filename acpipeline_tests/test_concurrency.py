"""Two runs of one partition at once, as real processes against the real PDS: two `acpipeline sync`
commands (as a CLI sync beside a daemon's run, or two daemons), on one machine and on two.
Judged by the independent oracle: every record once, each holding its document's value.

Each process talks to the PDS through a proxy of its own, so the test knows which process sent what, and
when. The first mood write of either is held at its proxy until the other process is where the case needs
it (a barrier, not luck): on two machines, until the other's first mood write arrives, so both are in
flight at once on the same commit; on one machine, until the other process waits for the account's turn
(a blocked lock in /proc/locks)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from .helpers import add_moods, add_user
from .oracle import assert_mirrored, expected_moods
from .test_reliability import (  # noqa: F401 (proxy_for is a fixture)
    PROJECT,
    _finish,
    _mood_writes,
    assert_rerun_writes_nothing,
    proxy_for,
)

APPLY = "com.atproto.repo.applyWrites"
HOLD_S = 45.0  # the barrier's time-out, under the client's read timeout (60 s): a held write is answered


def sync_cli(handle: str, pds_url: str, home: Path | None = None) -> subprocess.Popen:
    """`acpipeline sync` of the account's moods: one partition, so each command's run holds one of the two
    `pds_writes` slots. `home`: another machine's ACPIPELINE_HOME (same Dagster instance, PDS and MongoDB)."""
    env = dict(os.environ)  # the world's: ACPIPELINE_HOME, DAGSTER_HOME
    env["PDS_URL"] = pds_url
    if home is not None:
        env["ACPIPELINE_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "acpipeline.cli", "sync", "--handle", handle, "--media", "mood", "--json"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def second_machine(world) -> Path:
    """An ACPIPELINE_HOME of its own (sessions, locks, marks, caches) whose embedded store is the world's:
    two machines sharing one MongoDB."""
    home = world.home.parent / "machine-2"
    home.mkdir()
    (home / "mongo").symlink_to(world.home / "mongo", target_is_directory=True)
    return home


def replans_of(out: str) -> int:
    """How often the command's record stage re-planned from a fresh listing (its run's metadata)."""
    (row,) = json.loads(out)["partitions"]
    instance = DagsterInstance.get()  # the world's DAGSTER_HOME, where the command's run is recorded
    try:
        for record in instance.all_logs(row["run_id"], of_type=DagsterEventType.ASSET_MATERIALIZATION):
            materialization = record.dagster_event.event_specific_data.materialization
            if materialization.asset_key.to_user_string() == "atproto_records":
                return int(materialization.metadata["replans"].value)
    finally:
        instance.dispose()
    raise AssertionError(f"run {row['run_id']} recorded no atproto_records materialization")


def turn_waiters(lock_file: Path) -> int:
    """How many processes wait for the flock on `lock_file` (the blocked requests /proc/locks lists)."""
    try:
        inode = lock_file.stat().st_ino
    except FileNotFoundError:
        return 0
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[-3].endswith(f":{inode}"))


@dataclass
class Write:
    """One mood applyWrites as its process's proxy saw it (time.monotonic())."""

    arrived: float
    forwarded: float = 0.0
    answered: float = 0.0
    error: str | None = None  # the PDS's error name; None: applied


@dataclass
class Process:
    name: str
    writes: list[Write] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)  # its first mood write came


@pytest.mark.parametrize("machines", ["one machine", "two machines"])
def test_two_syncs_of_one_partition_at_once_leave_every_record_once(world, proxy_for, machines):  # noqa: F811
    """On one machine our writers to an account take turns (a lock file), so the second waits for the
    first's write; on two, both write on the same commit and the PDS refuses one (swapCommit), which
    re-plans. Either way: every record once, holding its document's value, nothing lost."""
    db = world.db()
    sub, handle, did = add_user(world, db, "twice")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])  # three applyWrites batches each
    other = second_machine(world) if machines == "two machines" else None
    lock_file = world.home / "locks" / f"{hashlib.sha256(did.encode()).hexdigest()[:24]}.lock"
    processes = [Process("first started"), Process("second started")]
    proxies = [proxy_for(keep_answers=frozenset({APPLY})) for _ in processes]
    lock = threading.Lock()
    held: list[Process] = []  # the process whose first mood write the barrier held
    barrier: dict[str, bool] = {}

    def hook_of(me: Process, proxy) -> object:
        you = processes[1 - processes.index(me)]

        def hook(seen) -> None:
            now = time.monotonic()
            if seen.nsid != APPLY or not _mood_writes(seen):
                return None
            if seen.phase == "after":
                (_, body), write = proxy.answers[-1], me.writes[-1]  # one write at a time per process
                write.answered = now
                write.error = (json.loads(body) if body else {}).get("error")
                return None
            me.writes.append(Write(arrived=now))
            with lock:
                first = not held and not me.arrived.is_set() and not you.arrived.is_set()
                if first:
                    held.append(me)
                me.arrived.set()
            if first and machines == "two machines":
                barrier["met"] = you.arrived.wait(HOLD_S)
            elif first:
                deadline = now + HOLD_S
                while not turn_waiters(lock_file) and time.monotonic() < deadline:
                    time.sleep(0.05)
                barrier["met"] = turn_waiters(lock_file) > 0
            me.writes[-1].forwarded = time.monotonic()
            return None

        return hook

    for process, proxy in zip(processes, proxies, strict=True):
        proxy.hooks.append(hook_of(process, proxy))
    syncs = [sync_cli(handle, proxies[0].url), sync_cli(handle, proxies[1].url, other)]
    outputs = [_finish(proc, timeout=300) for proc in syncs]
    for proxy in proxies:
        proxy.hooks.clear()
    for proc, (out, err) in zip(syncs, outputs, strict=True):
        assert proc.returncode == 0, (out, err)
    timeline = [(p.name, p.writes) for p in processes]
    assert held and all(p.writes for p in processes), f"a process sent no mood write (no overlap): {timeline}"
    held_process = held[0]
    other_process = processes[1 - processes.index(held_process)]
    refusals = [  # the process of each InvalidSwap the PDS answered, from the answers' bodies
        process.name
        for process, proxy in zip(processes, proxies, strict=True)
        for _, body in proxy.answers
        if body and json.loads(body).get("error") == "InvalidSwap"
    ]
    held_write, other_write = held_process.writes[0], other_process.writes[0]
    if machines == "two machines":
        # Both first writes were at the PDS at once, planned from the same listing on the same commit...
        assert barrier["met"], f"the other process's first write never came while one was held: {timeline}"
        in_flight_together = max(held_write.arrived, other_write.arrived) < min(
            held_write.answered, other_write.answered
        )
        assert in_flight_together, timeline
        # ... so the PDS applied one and refused the other unapplied (swapCommit), which re-planned from a
        # fresh listing and converged.
        assert {held_write.error, other_write.error} == {None, "InvalidSwap"}, timeline
        loser = held_process if held_write.error == "InvalidSwap" else other_process
        assert replans_of(outputs[processes.index(loser)][0]) >= 1, (loser.name, timeline)
    else:
        # The other process waited for the account's turn while the first write was held, wrote only once
        # it had been answered, on the head it made: never refused.
        assert barrier["met"], f"no process waited for the account's turn ({lock_file}): {timeline}"
        assert other_write.arrived >= held_write.answered, timeline
        assert refusals == [], refusals

    assert_mirrored(world.pds_url, db, did, "moods", "computer.aesthetic.mood", expected_moods(db, sub))
    assert_rerun_writes_nothing(world, handle, ["mood"])
    writes = sum(len(p.writes) for p in processes)
    how = "both wrote at once, one refused and re-planned" if refusals else "the second waited its turn"
    print(f"\nFIGURES concurrent runs ({machines}): {how}; {writes} mood writes, no duplicate")
