"""The record stage syncs several accounts at once (`ACCOUNTS_AT_ONCE`), so their round trips to the PDS
overlap, while one account's partitions still commit one after the other (its commits are a chain); against
the real PDS behind a `FaultProxy` whose hook holds each applyWrites a second and counts those in flight."""

from __future__ import annotations

import threading
import time
from collections import Counter

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.sync.partitions import FULL_TAG, handle_partitions, partition_ranges, register_handles
from acpipeline.sync.record_stage import ACCOUNTS_AT_ONCE
from acpipeline.sync.runner import _execute

from .helpers import add_moods, add_user
from .test_reliability import (
    APPLY,
    add_paintings,
    assert_converged,
    assert_rerun_writes_nothing,
    proxy_for,  # noqa: F401 (a fixture)
)

HOLD_S = 1.0  # each applyWrites waits this long at the proxy: for the others to start, even on a busy machine


class InFlight:
    """applyWrites in flight at once: the most overall, and the most for any one repository."""

    def __init__(self) -> None:
        self.by_repo: Counter[str] = Counter()
        self.most = 0
        self.most_one_repo = 0
        self._lock = threading.Lock()

    def __call__(self, seen) -> str | None:
        if seen.nsid != APPLY:
            return None
        repo = seen.json()["repo"]
        with self._lock:
            self.by_repo[repo] += 1 if seen.phase == "before" else -1
            self.most = max(self.most, sum(self.by_repo.values()))
            self.most_one_repo = max(self.most_one_repo, max(self.by_repo.values()))
        if seen.phase == "before":
            time.sleep(HOLD_S)
        return None


def test_accounts_sync_at_once_and_an_account_commits_one_partition_at_a_time(world, proxy_for):  # noqa: F811
    db = world.db()
    handles = []
    for n in range(6):
        sub, handle, _ = add_user(world, db, f"together{n}")
        add_moods(db, sub, [f"mood {n}.{i}" for i in range(3)])
        add_paintings(world, db, sub, 2)
        handles.append(handle)
    proxy = proxy_for()
    in_flight = InFlight()
    proxy.hooks.append(in_flight)

    # One run of every media type of the six accounts, as the nightly reconcile cuts them: 36 partitions,
    # 12 of them with records to write.
    register_handles(world.instance, db)
    order = world.instance.get_dynamic_partitions(handle_partitions.name)
    ranges = partition_ranges(order, [(h, m) for h in handles for m in MEDIA_NAMES], media_together=True)
    assert len(ranges) == 1, ranges
    results = _execute(world.defs(), world.instance, ranges[0], {}, {FULL_TAG: "true"})

    assert len(results) == 36 and all(r.ok and r.check_passed for r in results), [r.row() for r in results]
    assert proxy.requests[APPLY] == 12  # a commit per partition with records, none sent twice
    assert in_flight.most_one_repo == 1  # an account's partitions never commit at the same time
    assert 1 < in_flight.most <= ACCOUNTS_AT_ONCE, in_flight.most
    for handle in handles:
        assert_converged(world, db, handle, ["mood", "painting"])
    assert_rerun_writes_nothing(world, handle, ["mood", "painting"])
