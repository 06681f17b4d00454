"""Two runs of one partition at once, as real processes against the real PDS: two `acpipeline sync`
commands (as a CLI sync beside a daemon's run, or two daemons), on one machine and on two.
Judged by the independent oracle: every record once, each holding its document's value."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .helpers import add_moods, add_user
from .oracle import assert_mirrored, expected_moods
from .test_reliability import (  # noqa: F401 (proxy_for is a fixture)
    PROJECT,
    _finish,
    _mood_writes,
    assert_rerun_writes_nothing,
    proxy_for,
)

HOLD_S = 15.0  # under the client's read timeout: a held write is answered, not retried


def sync_cli(handle: str, home: Path | None = None) -> subprocess.Popen:
    """`acpipeline sync` of the account's moods: one partition, so each command's run holds one of the two
    `pds_writes` slots. `home`: another machine's ACPIPELINE_HOME (same Dagster instance, PDS and MongoDB)."""
    env = dict(os.environ)  # the world's: ACPIPELINE_HOME, DAGSTER_HOME, PDS_URL (the proxy)
    if home is not None:
        env["ACPIPELINE_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "acpipeline.cli", "sync", "--handle", handle, "--media", "mood"],
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


@pytest.mark.parametrize("machines", ["one machine", "two machines"])
def test_two_syncs_of_one_partition_at_once_leave_every_record_once(world, proxy_for, machines):  # noqa: F811
    """On one machine our writers to an account take turns (a lock file), so the second waits for the
    first's write; on two, both write on the same commit and the PDS refuses one (swapCommit), which
    re-plans. Either way: every record once, holding its document's value, nothing lost."""
    db = world.db()
    sub, handle, did = add_user(world, db, "twice")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])  # three applyWrites batches each
    proxy = proxy_for()
    together = threading.Event()
    lock = threading.Lock()
    mood_writes: list[int] = []
    met: list[bool] = []

    def hook(seen) -> None:
        # The first mood write waits at the proxy until the other process's first one arrives (or HOLD_S):
        # both were planned from the same listing and build on the same commit.
        if seen.phase != "before" or not _mood_writes(seen):
            return None
        with lock:
            mood_writes.append(seen.n)
            first = len(mood_writes) == 1
        if first:
            met.append(together.wait(HOLD_S))
        else:
            together.set()
        return None

    proxy.hooks.append(hook)
    other = second_machine(world) if machines == "two machines" else None
    syncs = [sync_cli(handle), sync_cli(handle, other)]
    outputs = [_finish(proc, timeout=300) for proc in syncs]
    proxy.hooks.remove(hook)
    for proc, (out, err) in zip(syncs, outputs, strict=True):
        assert proc.returncode == 0, (out, err)
    if machines == "one machine":
        assert met == [False], "the second run wrote while the first held its turn"

    assert_mirrored(world.pds_url, db, did, "moods", "computer.aesthetic.mood", expected_moods(db, sub))
    assert_rerun_writes_nothing(world, handle, ["mood"])
    how = "both wrote at once, one re-planned" if met == [True] else "the second waited its turn"
    print(f"\nFIGURES concurrent runs ({machines}): {how}; {len(mood_writes)} mood writes, no duplicate")
