"""SIGKILL inside a step that no request marks, then a re-run: the sync runs as a real process whose code is
wrapped at one point (before it starts) to do part of its work there and then kill its whole process group,
as a machine dying at that moment would. The re-run must converge to the state of one clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from .helpers import add_moods, add_user
from .oracle import assert_mirrored, expected_moods, expected_paintings
from .test_reliability import (
    PROJECT,
    _cli,
    _finish,
    add_paintings,
    assert_converged,
    assert_rerun_writes_nothing,
    expire_access,
)

# Code run in the sync's process before the command: each wraps one function to die inside it.
KILLS = {
    # Half of the moods' MongoDB link updates written, then the machine dies.
    "inside the MongoDB write-back": """
        from acpipeline.sync import links

        original = links.LinkWriter.flush

        def flush(self):
            ops = self._ops.get("moods")
            if ops:
                self.db["moods"].bulk_write(ops[: len(ops) // 2], ordered=False)
                die()
            return original(self)

        links.LinkWriter.flush = flush
    """,
    # Half of a batch of derived-cache index entries inserted, not committed.
    "inside the derived cache's index write": """
        from acpipeline.sync import cache

        def put(self, entries, at):
            rows = [(key, json.dumps(value), at) for key, value in entries.items()]
            half = rows[: len(rows) // 2 + 1]
            self._db().executemany("INSERT OR REPLACE INTO derived VALUES (?, ?, ?)", half)
            die()

        cache._SqliteIndex.put = put
    """,
    # Half of a thumbnail's bytes in the cache's temporary file, not yet renamed into place.
    "inside a derived blob's file write": """
        from acpipeline.sync import cache

        def write_new(path, data):
            path.with_name(f".{path.name}.torn.tmp").write_bytes(data[: len(data) // 2])
            die()

        cache._write_new = write_new
    """,
    # The PDS rotated the session's tokens; the machine dies before the new pair is saved.
    "during a session refresh": """
        from acpipeline.resources import pds

        def refresh(self, session):
            self.call("POST", "com.atproto.server.refreshSession", bearer=session.refresh)
            die()

        pds.PdsClient._refresh_locked = refresh
    """,
}

PRELUDE = """
import json, os, signal, sys

def die():
    os.killpg(os.getpgrp(), signal.SIGKILL)
"""


def sync_killed_inside(handle: str, point: str) -> None:
    code = (
        PRELUDE
        + textwrap.dedent(KILLS[point])
        + textwrap.dedent(
            f"""
        from acpipeline.cli import main
        sys.exit(main(["sync", "--handle", {handle!r}, "--media", "painting,mood"]))
        """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its forked workers too
    )
    out, err = _finish(proc, timeout=240)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, out, err[-2000:])


@pytest.mark.parametrize("point", list(KILLS))
def test_sigkill_inside_a_step_then_a_rerun_converges(world, point):
    db = world.db()
    sub, handle, did = add_user(world, db, "inside")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])
    add_paintings(world, db, sub, 4)
    if point == "during a session refresh":
        # A first sync saves the account's session; its access token then expires, so the next run refreshes.
        first = _cli(handle)
        assert _finish(first, timeout=180) and first.returncode == 0
        add_moods(db, sub, [f"later mood {i}" for i in range(20)])
        expire_access(did)
    sync_killed_inside(handle, point)
    linked = db["moods"].count_documents({"atproto.rkey": {"$exists": True}})

    rerun = _cli(handle)
    out, err = _finish(rerun, timeout=180)
    assert rerun.returncode == 0, (out, err)
    assert sum(assert_converged(world, db, handle, ["painting", "mood"]).values()) == 0
    assert_mirrored(world.pds_url, db, did, "moods", "computer.aesthetic.mood", expected_moods(db, sub))
    painted = expected_paintings(db, sub)
    assert_mirrored(world.pds_url, db, did, "paintings", "computer.aesthetic.painting", painted)
    assert_rerun_writes_nothing(world, handle, ["painting", "mood"])
    total = db["moods"].count_documents({})
    print(f"\nFIGURES killed {point}: {linked} of {total} moods linked at the kill; converged, 0 duplicates")
