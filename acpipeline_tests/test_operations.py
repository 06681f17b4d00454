"""Operations against the real reference PDS: wipe and restore, the new-content sensor, the schedule."""

from datetime import UTC, date, datetime, timedelta
from unittest.mock import ANY

import pytest
from bson import ObjectId
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_schedule_context,
    build_sensor_context,
)

from acpipeline.cli import main
from acpipeline.core.media import MEDIA, MEDIA_NAMES
from acpipeline.demo.dataset import build_tape_zip, zip_key
from acpipeline.instance import get_instance
from acpipeline.operations import requested_runs, tape_zips
from acpipeline.operations.schedule import full_recheck_slice, reconcile_schedule
from acpipeline.operations.sensor import new_content_sensor
from acpipeline.operations.sensor_state import SensorState, decode_state, encode_state, load_state, save_state
from acpipeline.operations.source_scan import projection, read_all
from acpipeline.operations.wipe import run_wipe
from acpipeline.settings import ART_GUEST_ID
from acpipeline.sync.partitions import (
    FULL_TAG,
    PARTITIONS_PER_RUN,
    RANGE_END_TAG,
    RANGE_START_TAG,
    partition_key,
    partition_ranges,
    range_members,
    register_handles,
)

from .helpers import OTHER, add_moods, add_pieces, add_user, create_other_record, head, records, sync


def aesthetic_records(world, did: str) -> dict[str, int]:
    return {MEDIA[m].nsid: len(records(world, did, MEDIA[m].nsid)) for m in MEDIA_NAMES}


def linked(db, collection: str, ids) -> list[bool]:
    return [bool((db[collection].find_one({"_id": i}).get("atproto") or {}).get("rkey")) for i in ids]


# -- wipe -------------------------------------------------------------------------------------------------


def test_wipe_removes_exactly_the_accounts_records_and_sync_restores_them(world, capsys):
    db = world.db()
    sub, handle, did = add_user(world, db, "wiped")
    other_sub, other_handle, other_did = add_user(world, db, "bystander")
    moods = add_moods(db, sub, [f"mood {i}" for i in range(230)])  # two applyWrites batches
    pieces = add_pieces(db, sub, ["wand", "line"])
    other_moods = add_moods(db, other_sub, ["untouched", "also untouched"])
    first = sync(world, [handle, other_handle], ["mood", "piece"])
    assert all(r.ok for r in first.values())
    kept_uri = create_other_record(world, db, sub, did)
    before = aesthetic_records(world, did)
    assert before[MEDIA["mood"].nsid] == 230 and before[MEDIA["piece"].nsid] == 2
    bystander = {nsid: records(world, other_did, nsid) for nsid in (MEDIA["mood"].nsid, MEDIA["piece"].nsid)}

    # refused without confirmation; a dry run counts and changes nothing
    rev = head(world, did)
    refused = run_wipe(world.defs(), world.instance, handle)
    assert not refused.ok and "confirm_handle" in refused.error
    assert main(["wipe", "--handle", handle]) == 0
    out = capsys.readouterr().out
    assert "would_delete" in out and "add --yes" in out and "232 records" in out
    assert head(world, did) == rev and aesthetic_records(world, did) == before
    assert all(linked(db, "moods", moods))

    # the wipe, through the CLI
    assert main(["wipe", "--handle", handle, "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"{MEDIA['mood'].nsid}" in out and "232 records deleted" in out
    assert aesthetic_records(world, did) == dict.fromkeys(before, 0)
    assert [r["uri"] for r in records(world, did, OTHER)] == [kept_uri]
    assert {n: records(world, other_did, n) for n in bystander} == bystander
    assert not any(linked(db, "moods", moods)) and not any(linked(db, "pieces", pieces))
    assert all(linked(db, "moods", other_moods))
    doc = db["moods"].find_one({"_id": moods[0]})
    assert not set(doc.get("atproto") or {}) & {"rkey", "uri", "cid", "syncedAt"}

    # the UI sees the partitions wiped: an observation and a failed check on atproto_records
    instance = DagsterInstance.get()  # the CLI's instance (DAGSTER_HOME)
    observations = instance.fetch_observations(AssetKey("atproto_records"), limit=10).records
    wiped = {o.partition_key: o.asset_observation.metadata for o in observations}
    assert set(wiped) == {partition_key(handle, "mood"), partition_key(handle, "piece")}
    assert wiped[partition_key(handle, "mood")]["wiped"].value is True
    assert wiped[partition_key(handle, "mood")]["records_deleted"].value == 230
    checks = instance.get_records_for_run(
        run_id=instance.get_runs(limit=1)[0].run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    assert {c.event_log_entry.dagster_event.event_specific_data.passed for c in checks} == {False}

    # a second wipe deletes nothing and succeeds
    again = run_wipe(world.defs(), world.instance, handle, confirm=True)
    assert again.ok and again.value["records_deleted"] == 0 and again.value["links_cleared"] == 0
    assert [r["uri"] for r in records(world, did, OTHER)] == [kept_uri]

    # restore: a sync of the account
    restored = sync(world, [handle])
    assert all(r.ok and r.check_passed for r in restored.values()), [r.row() for r in restored.values()]
    assert aesthetic_records(world, did) == before
    assert all(linked(db, "moods", moods)) and all(linked(db, "pieces", pieces))
    assert [r["uri"] for r in records(world, did, OTHER)] == [kept_uri]


def test_wipe_of_the_art_account_clears_only_anonymous_items(world):
    """The art account (`art-guest` in MongoDB; a unique handle on the shared test PDS) owns the anonymous
    items: its wipe clears their links and no owned item's."""
    db = world.db()
    handle, did, password = world.new_account("art")
    db["users"].insert_one(
        {"_id": ART_GUEST_ID, "atproto": {"did": did, "handle": handle, "password": password}}
    )
    sub, user_handle, user_did = add_user(world, db, "owner")
    anonymous = add_pieces(db, None, ["anon", "mous"])
    owned = add_pieces(db, sub, ["mine"])
    assert all(r.ok for r in sync(world, [handle, user_handle], ["piece"]).values())
    assert len(records(world, did, MEDIA["piece"].nsid)) == 2

    media_only = run_wipe(world.defs(), world.instance, handle, ["piece", "mood"], confirm=True)
    assert media_only.ok, media_only.error
    rows = {r["media"]: r for r in media_only.value["collections"]}
    assert set(rows) == {"piece", "mood"}
    assert (rows["piece"]["deleted"], rows["piece"]["links_cleared"]) == (2, 2)
    assert records(world, did, MEDIA["piece"].nsid) == []
    assert not any(linked(db, "pieces", anonymous)) and all(linked(db, "pieces", owned))
    assert len(records(world, user_did, MEDIA["piece"].nsid)) == 1


def test_wipe_refuses_unknown_handles_and_media(world):
    db = world.db()
    add_user(world, db, "someone")
    unknown = run_wipe(world.defs(), world.instance, "nobody.at.aesthetic.computer", confirm=True)
    assert not unknown.ok and "no user in MongoDB" in unknown.error
    assert main(["wipe", "--handle", "x.at.aesthetic.computer", "--media", "sculpture"]) == 2


# -- the new-content sensor -------------------------------------------------------------------------------


def requested(instance, requests) -> dict[str, str]:
    """partition key -> reason of every partition the run requests cover (ranges expanded)."""
    order = instance.get_dynamic_partitions("handle")
    out = {}
    for request in requests:
        assert request.partition_key is None  # ranges, never a run per partition
        start, end = request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]
        for handle, media in range_members(order, start, end):
            out[partition_key(handle, media)] = request.tags.get("acpipeline/reason", "")
    return out


class SensorDriver:
    """Evaluates the sensor as the daemon would, carrying its cursor from tick to tick, and makes the runs it
    requests in the instance with the status `launch` (they do not run; None: the daemon lost them)."""

    def __init__(self, world):
        self.world = world
        defs = world.defs()
        self.resources = defs.resources
        self.job = defs.resolve_job_def("sync_partition")
        self.cursor: str | None = None
        self.runs: list[DagsterRun] = []

    def tick(self, launch: DagsterRunStatus | None = DagsterRunStatus.SUCCESS) -> dict[str, str]:
        with build_sensor_context(
            instance=self.world.instance, cursor=self.cursor, resources=self.resources
        ) as context:
            result = new_content_sensor(context)
        self.cursor = result.cursor
        assert self.state() is not None and len(self.cursor) < 40
        requests = result.run_requests or []
        for request in requests if launch else []:
            run = self.world.instance.create_run_for_job(job_def=self.job, status=launch, tags=request.tags)
            self.runs.append(run)
        return requested(self.world.instance, requests)

    def state(self) -> SensorState | None:
        return load_state(self.world.instance, self.cursor)


def test_sensor_requests_exactly_the_partitions_whose_source_changed(world):
    db = world.db()
    sub, handle, _ = add_user(world, db, "active")
    moods = add_moods(db, sub, ["first", "second", "third"])
    pieces = add_pieces(db, sub, ["wand"])
    sync(world, [handle], ["mood", "piece"])
    driver = SensorDriver(world)

    assert driver.tick() == {}  # first tick: its baseline; everything it sees was synced already
    assert driver.tick() == {}

    add_moods(db, sub, ["fourth"])
    assert driver.tick() == {partition_key(handle, "mood"): "source-changed"}
    assert driver.tick() == {}

    db["moods"].update_one({"_id": moods[0]}, {"$set": {"mood": "first, edited"}})
    db["pieces"].update_one({"_id": pieces[0]}, {"$set": {"nuked": True}})
    assert driver.tick() == {
        partition_key(handle, "mood"): "source-changed",
        partition_key(handle, "piece"): "source-changed",
    }
    db["moods"].update_one({"_id": moods[1]}, {"$set": {"deleted": True}})
    assert driver.tick() == {partition_key(handle, "mood"): "source-changed"}
    db["moods"].delete_one({"_id": moods[2]})
    assert driver.tick() == {partition_key(handle, "mood"): "source-changed"}

    # fields no record is built from, and the links a sync writes back, are not changes
    db["moods"].update_one({"_id": moods[0]}, {"$set": {"hits": 12}})
    sync(world, [handle], ["mood", "piece"])
    assert driver.tick() == {}

    # a user who gained an account: registered and synced in the same tick
    new_sub, new_handle, _ = add_user(world, db, "newcomer")
    add_moods(db, new_sub, ["hello"])
    assert new_handle not in world.instance.get_dynamic_partitions("handle")
    assert driver.tick() == {partition_key(new_handle, "mood"): "new-account"}
    assert new_handle in world.instance.get_dynamic_partitions("handle")

    # a change whose partition already has a run waiting to start: that run will read it
    waiting = world.instance.create_run_for_job(
        job_def=world.defs().resolve_job_def("sync_partition"),
        status=DagsterRunStatus.NOT_STARTED,
        tags={"dagster/partition": partition_key(handle, "mood")},
    )
    add_moods(db, sub, ["fifth"])
    assert driver.tick() == {}
    assert driver.state().pending == {partition_key(handle, "mood"): [f"r:{waiting.run_id}", ANY, 0]}
    world.instance.report_run_canceled(waiting)
    # canceled before it read the change: requested again (its run succeeds), then no more
    assert driver.tick() == {partition_key(handle, "mood"): "retry"}
    assert driver.tick() == {}
    assert driver.state().pending == {}

    # a user without an account changes nothing
    db["users"].insert_one({"_id": "auth0|noaccount", "code": "none"})
    add_moods(db, "auth0|noaccount", ["nobody syncs me"])
    assert driver.tick() == {}


@pytest.mark.parametrize("ending", ["failed", "canceled"])
def test_sensor_requests_a_change_again_until_a_run_of_it_succeeds(world, ending):
    db = world.db()
    sub, handle, _ = add_user(world, db, "unlucky")
    add_moods(db, sub, ["first"])
    sync(world, [handle], ["mood"])
    driver = SensorDriver(world)
    assert driver.tick() == {}
    key = partition_key(handle, "mood")

    add_moods(db, sub, ["second"])
    assert driver.tick(launch=DagsterRunStatus.STARTED) == {key: "source-changed"}
    assert driver.tick() == {}  # its run is going: not requested again
    run = driver.runs[-1]
    assert driver.state().pending == {key: [f"t:{run.tags['acpipeline/sensor_request']}", ANY, 0]}
    if ending == "failed":
        world.instance.report_run_failed(run)
    else:
        world.instance.report_run_canceled(run)
    assert driver.tick() == {key: "retry"}  # the change is requested again; this run succeeds
    assert driver.tick() == {}
    assert driver.state().pending == {}
    assert driver.tick() == {}


def test_sensor_retries_lost_requests_and_leaves_a_partition_that_keeps_failing_to_the_nightly_run(
    world, monkeypatch
):
    db = world.db()
    sub, handle, _ = add_user(world, db, "doomed")
    driver = SensorDriver(world)
    assert driver.tick() == {}
    mood, piece = partition_key(handle, "mood"), partition_key(handle, "piece")

    add_moods(db, sub, ["one"])
    add_pieces(db, sub, ["wand"])
    changed = {mood: "source-changed", piece: "source-changed"}
    assert driver.tick(launch=None) == changed  # the daemon made no run of these requests
    assert driver.tick() == {}  # it may yet
    monkeypatch.setattr(requested_runs, "MISSING_RUN_GRACE_S", 0)
    assert driver.tick(launch=DagsterRunStatus.FAILURE) == {mood: "retry", piece: "retry"}  # lost: 1
    assert driver.tick(launch=DagsterRunStatus.FAILURE) == {mood: "retry", piece: "retry"}  # failed: 2
    assert driver.tick() == {}  # failed 3 times in a row: the nightly reconcile's now
    assert driver.state().pending == {}
    add_moods(db, sub, ["two"])
    assert driver.tick(launch=DagsterRunStatus.FAILURE) == {mood: "source-changed"}  # a change starts afresh
    assert driver.tick() == {mood: "retry"}
    assert driver.tick() == {}
    assert driver.state().pending == {}


def test_sensor_first_tick_requests_partitions_never_synced(world):
    db = world.db()
    sub, handle, _ = add_user(world, db, "fresh")
    add_moods(db, sub, ["one"])
    add_pieces(db, sub, ["wand"])
    sync(world, [handle], ["piece"])
    assert SensorDriver(world).tick() == {partition_key(handle, "mood"): "never-synced"}


def test_sensor_requests_a_tape_partition_when_its_zip_appears(world, monkeypatch):
    monkeypatch.setattr(tape_zips, "ZIP_RECHECK_S", 0)
    db = world.db()
    sub, handle, _ = add_user(world, db, "taper")
    tape = {
        "_id": ObjectId(),
        "user": sub,
        "code": "tp1",
        "slug": "2024.3.1.12.0.0.000",
        "bucket": "user-aesthetic-computer",
        "when": datetime(2024, 3, 1, tzinfo=UTC),
    }
    driver = SensorDriver(world)
    assert driver.tick() == {}  # baseline, nothing there
    db["tapes"].insert_one(tape)
    assert driver.tick() == {partition_key(handle, "tape"): "source-changed"}
    assert driver.state().zips[str(tape["_id"])][0] == "m"
    assert driver.tick() == {}  # still missing
    build_tape_zip(
        world.media_root / "user-aesthetic-computer" / zip_key(tape["slug"], sub), 64, 64, frames=6, fps=30
    )
    assert driver.tick() == {partition_key(handle, "tape"): "tape-zip-appeared"}
    assert driver.tick() == {}  # seen present: not requested again
    result = sync(world, [handle], ["tape"])[(handle, "tape")]
    assert result.ok and result.outcome.created == 1
    assert driver.tick() == {}
    assert driver.state().zips == {}


def test_sensor_state_lives_beside_a_short_cursor():
    instance = DagsterInstance.ephemeral()
    state = SensorState(
        digests={"a.test": ["x" * 11, "", "", "", ""]},
        zips={"r": ["m", 5]},
        pending={"a.test|mood": ["t:b.0", 5, 1]},
    )
    big = SensorState(digests={f"h{i}.test": [f"{i:011d}"] * 5 for i in range(5000)})
    first = save_state(instance, state, None)
    assert load_state(instance, first) == state
    assert save_state(instance, state, first) == first  # unchanged: same cursor, nothing written
    second = save_state(instance, big, first)
    assert len(second) < 40 and load_state(instance, second) == big  # stored in chunks
    assert load_state(instance, first) == state  # the previous generation survives
    third = save_state(instance, state, second)
    assert load_state(instance, first) is None  # its slot was reused: a stale cursor starts over
    assert load_state(instance, third) == state
    for cursor in (None, "", "garbage", "kv1:x:y", "kv1:99:abc"):
        assert load_state(instance, cursor) is None
    assert decode_state(encode_state(big)) == big and decode_state("not base64!") is None


def test_projection_holds_every_field_records_are_built_from(world):
    from acpipeline.demo.dataset import seed_dataset

    db = world.db()
    seed_dataset(db, world.media_root, lambda handle, password: f"did:plc:{handle[:8]}", size="small")
    for media, rules in MEDIA.items():
        full = {d["_id"]: d for d in db[rules.collection].find({})}
        projected = read_all(db[rules.collection], {}, projection(media))
        assert len(projected) == len(full) > 0
        for doc in projected:
            assert rules.normalise(doc) == rules.normalise(full[doc["_id"]]), (media, doc["_id"])
            assert rules.is_item(doc) == rules.is_item(full[doc["_id"]]), (media, doc["_id"])


# -- the reconcile schedule -------------------------------------------------------------------------------


def _schedule_tick(world, instance, when: datetime) -> list:
    defs = world.defs()
    with build_schedule_context(
        instance=instance,
        resources=defs.resources,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=when,
    ) as context:
        return reconcile_schedule.evaluate_tick(context).run_requests or []


def test_schedule_runs_the_nightly_slice_in_full_and_the_rest_unless_proven_converged(world):
    db = world.db()
    users = [add_user(world, db, name) for name in ("nightly", "owl", "lark")]
    for sub, _, _ in users:
        add_moods(db, sub, ["a mood", "another"])
    instance = get_instance()  # a schedule's context needs a persistent instance (DAGSTER_HOME)
    register_handles(instance, db)
    order = instance.get_dynamic_partitions("handle")
    night = datetime(2026, 1, 1, 3, tzinfo=UTC)
    tonight = full_recheck_slice([h for h in order if h in {u[1] for u in users}], night.date(), 7)
    every = {partition_key(h, m) for _, h, _ in users for m in MEDIA_NAMES}
    slice_keys = {partition_key(h, m) for h in tonight for m in MEDIA_NAMES}
    # the moods are not synced: those partitions run; the others are empty on both sides (proven)
    requests = _schedule_tick(world, instance, night)
    assert len({r.run_key for r in requests}) == len(requests)
    full = requested(instance, [r for r in requests if r.tags.get(FULL_TAG) == "true"])
    assert set(full) == slice_keys
    rest = requested(instance, [r for r in requests if r.tags.get(FULL_TAG) != "true"])
    assert {k for k in rest if k.endswith("|mood")} == {
        partition_key(h, "mood") for _, h, _ in users
    } - slice_keys
    assert set(rest) | set(full) <= every

    # once synced, only the nightly slice runs
    sync(world, [h for _, h, _ in users], ["mood"], full=False)
    requests = _schedule_tick(world, instance, night + timedelta(days=1))
    tomorrow = full_recheck_slice(
        [h for h in order if h in {u[1] for u in users}], (night + timedelta(days=1)).date(), 7
    )
    assert set(requested(instance, requests)) == {partition_key(h, m) for h in tomorrow for m in MEDIA_NAMES}
    assert all(r.tags.get(FULL_TAG) == "true" for r in requests)


def test_schedule_batches_the_platform_into_few_runs_and_rechecks_every_account_weekly():
    handles = [f"user{n:04d}.at.aesthetic.computer" for n in range(979)]
    every = [(h, m) for h in handles for m in MEDIA_NAMES]
    ranges = partition_ranges(handles, every, media_together=True)
    assert len(ranges) <= 50 and all(r.size <= PARTITIONS_PER_RUN for r in ranges)
    covered = [k for r in ranges for k in range_members(handles, r.start, r.end)]
    assert sorted(covered) == sorted(every)
    week = [full_recheck_slice(handles, date(2026, 1, 1) + timedelta(days=d), 7) for d in range(7)]
    assert set().union(*week) == set(handles) and sum(len(w) for w in week) == len(handles)


def test_schedule_cron_comes_from_the_environment(monkeypatch):
    import importlib

    from acpipeline.operations import schedule

    assert schedule.reconcile_schedule.cron_schedule == schedule.DEFAULT_SYNC_CRON
    monkeypatch.setenv("ACPIPELINE_SYNC_CRON", "*/15 * * * *")
    try:
        assert importlib.reload(schedule).reconcile_schedule.cron_schedule == "*/15 * * * *"
    finally:
        monkeypatch.delenv("ACPIPELINE_SYNC_CRON")
        importlib.reload(schedule)
