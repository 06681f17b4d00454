"""The record stage reads an account's repository with one getRepo and keeps the read for the account's
other partitions while the repository stays at that revision (`sync/repo_reads.py`); at any other
revision it reads again. Counted at a proxy in front of the real PDS."""

from __future__ import annotations

from bson import ObjectId

from acpipeline.resources.pds import PdsClient, RepoLimits
from acpipeline.sync.repo_reads import RepoReads

from .faultproxy import Seen
from .helpers import T0, add_moods, add_user, create_other_record, head, records, sync, write_as_another_tool
from .test_check_fails import APPLY, check_metadata
from .test_reliability import proxy_for  # noqa: F401 (a fixture)

GET_REPO = "com.atproto.sync.getRepo"
LIST = "com.atproto.repo.listRecords"
HEAD = "com.atproto.sync.getLatestCommit"
DESCRIBE = "com.atproto.repo.describeRepo"


def test_a_kept_read_serves_only_its_own_revision(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "kept")
    add_moods(db, sub, ["one", "two"])
    assert sync(world, [handle], ["mood"])[(handle, "mood")].check_passed
    proxy = proxy_for()
    client = PdsClient(proxy.url)
    reads = RepoReads(client, world.home)
    try:
        rev = head(world, did)
        first = reads.at(did, rev)  # the sync's check kept its read at this revision
        assert proxy.requests[GET_REPO] == 0 and first.rev == rev
        assert sorted(r.value["mood"] for r in first.collection("computer.aesthetic.mood")) == ["one", "two"]
        create_other_record(world, db, sub, did)
        moved = head(world, did)
        assert reads.at(did, moved).rev == moved and proxy.requests[GET_REPO] == 1
        assert reads.at(did, moved) == reads.at(did, moved) and proxy.requests[GET_REPO] == 1
        assert reads.at(did, rev).rev == moved and proxy.requests[GET_REPO] == 2  # never the old read
    finally:
        reads.close()
        client.close()


def test_an_accounts_next_partition_plans_from_the_read_its_last_check_kept(world, proxy_for):  # noqa: F811
    """A run of the account's pieces after a run of its moods: one listRepos says the repository is where the
    moods' check left it, so the plan asks nothing, and the check judges from the plan's read and the
    sync's own commit (no getRepo, no listRecords, no getLatestCommit but the run's own revision read: for
    up to 3 accounts that is getLatestCommit instead of listRepos). Once another writer moved the
    repository, the plan reads it again, and only the plan."""
    db = world.db()
    sub, handle, did = add_user(world, db, "partitions")
    add_moods(db, sub, ["one"])
    assert sync(world, [handle], ["mood"])[(handle, "mood")].check_passed
    db["pieces"].insert_one({"_id": ObjectId(), "user": sub, "slug": "p1", "when": T0, "code": "a"})

    proxy = proxy_for()
    result = sync(world, [handle], ["piece"])[(handle, "piece")]
    assert result.check_passed and result.row()["created"] == 1, result.row()
    assert (proxy.requests[GET_REPO], proxy.requests[LIST], proxy.requests[HEAD]) == (0, 0, 1), proxy.requests
    meta = check_metadata(world, result.run_id)
    assert meta["judged_from"] == "the sync's commits, chained from its read", meta
    assert meta["rev"] == head(world, did) and (meta["on_pds"], meta["desired"]) == (1, 1), meta

    create_other_record(world, db, sub, did)
    db["pieces"].insert_one({"_id": ObjectId(), "user": sub, "slug": "p2", "when": T0, "code": "b"})
    proxy.requests.clear()
    result = sync(world, [handle], ["piece"])[(handle, "piece")]
    assert result.check_passed and result.row()["created"] == 1, result.row()
    assert (proxy.requests[GET_REPO], proxy.requests[LIST]) == (1, 0), proxy.requests  # the plan's read
    # what the check judged from is kept: the account's next partition plans from it without a read
    proxy.requests.clear()
    add_moods(db, sub, ["two"])
    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.check_passed and result.row()["created"] == 1, result.row()
    assert (proxy.requests[GET_REPO], proxy.requests[LIST]) == (0, 0), proxy.requests
    assert sorted(r["value"]["mood"] for r in records(world, did, "computer.aesthetic.mood")) == [
        "one",
        "two",
    ]


def test_a_check_after_writes_reads_again_when_another_writer_came_between(world, proxy_for):  # noqa: F811
    """Another tool writes to the account between the plan's read and the sync's commit: the PDS refuses
    the commit (its swapCommit names the read's commit), the sync sends it again on the new head, and the
    repository is no longer the plan's read plus our writes, so the check reads it again."""
    db = world.db()
    sub, handle, did = add_user(world, db, "between")
    add_moods(db, sub, ["one"])
    assert sync(world, [handle], ["mood"])[(handle, "mood")].check_passed
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]  # the store is this thread's
    add_moods(db, sub, ["two"])
    proxy = proxy_for()
    done = False

    def another_writer_first(seen: Seen) -> None:
        nonlocal done
        if seen.nsid == APPLY and seen.phase == "before" and not done:
            done = True
            write_as_another_tool(world, did, password)

    proxy.hooks.append(another_writer_first)
    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.check_passed and result.row()["created"] == 1, result.row()
    assert proxy.answered[(APPLY, 400)] == 1 and proxy.answered[(APPLY, 200)] == 1, proxy.answered
    assert proxy.requests[GET_REPO] == 1, proxy.requests  # the check's: the plan's read was kept
    meta = check_metadata(world, result.run_id)
    assert meta["judged_from"] == "read after the sync" and meta["rev"] == head(world, did), meta


def test_an_empty_partition_is_proven_from_the_kept_read(world, proxy_for):  # noqa: F811
    """No document and no record: proven empty from the repository the last check read, without asking the
    PDS (no describeRepo, no getRepo)."""
    db = world.db()
    sub, handle, did = add_user(world, db, "empty")
    add_moods(db, sub, ["one"])
    assert sync(world, [handle], ["mood"])[(handle, "mood")].check_passed
    proxy = proxy_for()
    result = sync(world, [handle], ["tape"], full=False)[(handle, "tape")]
    assert result.skipped and result.ok, result.row()
    assert (proxy.requests[GET_REPO], proxy.requests[DESCRIBE]) == (0, 0), proxy.requests


def test_a_repository_the_checks_refuse_is_read_the_old_way_and_syncs(world, proxy_for, monkeypatch):  # noqa: F811
    """A CAR over the bounds (here 200 bytes) is refused (`RepoError`); the account's partitions are then
    planned and checked from listRecords, and the sync converges. The repository as the sync's commits
    left it (that read and our writes) is kept: the swapCommit chain makes it exact however it was read."""
    from acpipeline.sync import repo_reads

    db = world.db()
    sub, handle, did = add_user(world, db, "refused")
    add_moods(db, sub, ["one", "two"])
    monkeypatch.setattr(repo_reads, "LIMITS", RepoLimits(max_bytes=200))
    proxy = proxy_for()
    first = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert first.check_passed and first.row()["created"] == 2, first.row()
    again = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert again.check_passed and again.row()["unchanged"] == 2, again.row()
    # 2 reads: the first plan's and the check of the sync that wrote nothing (the second plan used what the
    # first check kept), each a refused getRepo, then the head, describeRepo and the moods' listRecords
    assert proxy.requests[GET_REPO] == proxy.requests[DESCRIBE] == 2, proxy.requests
    assert proxy.requests[LIST] >= 1, proxy.requests
