"""The asset check `pds_holds_desired_records` against a PDS that really diverges, through a proxy in front
of the real PDS: a record deleted, changed or duplicated by another writer between the plan of a sync that
had nothing to write and its check, and an applyWrites answered as applied that never reached the PDS.
Each fails the check with the right count and reason; the partition gets no convergence mark, so the next
run syncs it again and passes."""

from __future__ import annotations

import json
from collections.abc import Callable

from dagster import DagsterEventType

from acpipeline.core.tid import encode_tid

from .faultproxy import Seen
from .helpers import add_moods, add_user, records, sync
from .test_reliability import proxy_for  # noqa: F401 (a fixture)

MOOD = "computer.aesthetic.mood"
APPLY = "com.atproto.repo.applyWrites"
GET_REPO = "com.atproto.sync.getRepo"
LIST = "com.atproto.repo.listRecords"


def check_metadata(world, run_id: str) -> dict:
    (entry,) = world.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluation = entry.dagster_event.event_specific_data
    return {"passed": evaluation.passed, **{k: v.value for k, v in evaluation.metadata.items()}}


def write_behind(world, password: str, did: str, action: str, rkey: str, value: dict | None = None) -> None:
    """Another writer's applyWrites of one record, straight to the PDS (not through the proxy)."""
    session = world.client.session(did, password)
    write = {"$type": f"{APPLY}#{action}", "collection": MOOD, "rkey": rkey}
    body = json.dumps({"repo": did, "writes": [write | ({"value": value} if value else {})]}).encode()
    world.client.call("POST", APPLY, body=body, session=session)


def on_the_checks_read(action: Callable[[], None]) -> Callable[[Seen], None]:
    """A proxy hook that runs `action` once, right before the check's read of the repository: the first
    getRepo of a sync whose plan reads the repository kept at its revision (the run's listRepos shows the
    revision the last check read, so the plan asks nothing; `diverge_and_check` asserts it)."""
    done = False

    def hook(seen: Seen) -> None:
        nonlocal done
        if seen.nsid == GET_REPO and seen.phase == "before" and not done:
            done = True
            action()

    return hook


def diverge_and_check(world, proxy_for, action, **expected) -> dict:  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "judged")
    add_moods(db, sub, ["one", "two", "three"])
    assert sync(world, [handle], ["mood"])[(handle, "mood")].check_passed
    # A full re-check that has nothing to write: the check must still read the PDS again, not trust the
    # plan's read (here the one the first sync's check kept).
    proxy = proxy_for()
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]  # the store is this thread's
    proxy.hooks.append(on_the_checks_read(lambda: action(world, password, did)))
    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.row()["created"] + result.row()["updated"] + result.row()["deleted"] == 0, result.row()
    assert proxy.requests[GET_REPO] == 1 and proxy.requests[LIST] == 0, proxy.requests  # the check's read
    meta = check_metadata(world, result.run_id)
    assert result.ok and result.check_passed is False and meta["passed"] is False, meta
    for name, value in expected.items():
        assert meta[name] == value, (name, meta)
    counts = {k: meta[k] for k in ("missing", "duplicated", "differing", "unexpected")}
    assert sum(counts.values()) == sum(expected.get(k, 0) for k in counts), meta
    # No mark was made: the next run plans from the PDS again, repairs what diverged, and passes.
    proxy.hooks.clear()
    again = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert not again.skipped and again.check_passed, again.row()
    assert sorted(r["value"]["mood"] for r in records(world, did, MOOD)) == ["one", "three", "two"]
    return meta


def listed_rkeys(world, did: str) -> list[str]:
    return sorted(r["uri"].rsplit("/", 1)[-1] for r in records(world, did, MOOD))


def test_a_record_deleted_behind_the_syncs_back_is_missing(world, proxy_for):  # noqa: F811
    def delete_one(world, password, did):
        rkey = listed_rkeys(world, did)[0]
        write_behind(world, password, did, "delete", rkey)

    meta = diverge_and_check(world, proxy_for, delete_one, missing=1, on_pds=2)
    assert meta["problems"][0].endswith(": no record on the PDS"), meta


def test_a_record_changed_behind_the_syncs_back_differs(world, proxy_for):  # noqa: F811
    def change_one(world, password, did):
        record = records(world, did, MOOD)[0]
        value = {**record["value"], "mood": "changed by someone else"}
        rkey = record["uri"].rsplit("/", 1)[-1]
        write_behind(world, password, did, "update", rkey, value)

    meta = diverge_and_check(world, proxy_for, change_one, differing=1, on_pds=3)
    assert meta["problems"][0].endswith(": differs in mood"), meta


def test_a_duplicate_made_by_another_writer_is_duplicated(world, proxy_for):  # noqa: F811
    def duplicate_one(world, password, did):
        value = records(world, did, MOOD)[0]["value"]
        rkey = encode_tid(1_700_000_000_000_000, 7)
        write_behind(world, password, did, "create", rkey, value)

    meta = diverge_and_check(world, proxy_for, duplicate_one, duplicated=1, on_pds=4)
    assert ": 2 records (" in meta["problems"][0], meta


def test_an_applywrites_answered_but_never_applied_leaves_every_record_missing(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, did = add_user(world, db, "fooled")
    add_moods(db, sub, ["one", "two", "three"])
    proxy = proxy_for(script={(APPLY, 1): "200_unsent"})
    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.row()["created"] == 3  # the sync believed the answer
    meta = check_metadata(world, result.run_id)
    assert result.check_passed is False and (meta["missing"], meta["on_pds"]) == (3, 0), meta
    assert proxy.faults[("200_unsent", APPLY)] == 1 and records(world, did, MOOD) == []
    again = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert not again.skipped and again.check_passed and again.row()["created"] == 3, again.row()
