"""Runs over ranges of partitions (what backfills, the schedule and the sensor launch), against the real PDS:
which partitions a range run sees, per-partition materializations, metadata and checks, a partial failure,
and partitions proven converged inside the run. Pins the Dagster 1.13 behaviour the assets rely on."""

from __future__ import annotations

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSpec,
    AssetMaterialization,
    AssetRecordsFilter,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    Output,
    PartitionKeyRange,
    StaticPartitionsDefinition,
    in_process_executor,
)
from dagster import asset as dagster_asset
from dagster._core.definitions.backfill_policy import BackfillPolicyType
from dagster._core.storage.event_log.base import PartitionKeyFilter

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.sync.account_turns import account_turn
from acpipeline.sync.assets import atproto_records, media_blobs, source_items
from acpipeline.sync.links import LinkWriter
from acpipeline.sync.marks import ConvergedState
from acpipeline.sync.partitions import (
    FULL_TAG,
    handle_partitions,
    keys_of_run,
    partition_key,
    partition_ranges,
    register_handles,
    sync_partitions,
)
from acpipeline.sync.repo_reads import RepoReads

from .helpers import (
    add_moods,
    add_pieces,
    add_user,
    create_other_record,
    head,
    records,
    write_as_another_tool,
)

CHECK = "pds_holds_desired_records"


def run_range(world, start: str, end: str, **tags: str):
    """The sync job over a partition range, as a backfill run of that range executes it."""
    job = world.defs().resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=world.instance,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end, **tags},
    )


def by_partition(result, event_type: str, asset: str | None = None) -> dict[str, object]:
    out = {}
    for event in result.all_events:
        if event.event_type_value != event_type:
            continue
        data = event.event_specific_data
        entry = getattr(data, "materialization", None) or data
        if asset and entry.asset_key.to_user_string() != asset:
            continue
        out[str(entry.partition)] = entry
    return out


@pytest.fixture
def three_users(world):
    """Three accounts with 1, 2 and 3 moods, registered as handle partitions in this order."""
    db = world.db()
    users = []
    for n in (1, 2, 3):
        sub, handle, did = add_user(world, db, f"range{n}")
        add_moods(db, sub, [f"mood {i} of {n}" for i in range(n)])
        users.append((sub, handle, did))
    world.instance.add_dynamic_partitions(handle_partitions.name, [h for _, h, _ in users])
    return db, users


def test_a_range_run_materializes_each_partition_with_its_own_metadata_and_check(
    world, three_users, monkeypatch
):
    db, users = three_users
    handles = [h for _, h, _ in users]
    bulk_writes: list[int] = []
    flush = LinkWriter.flush

    def counted(self):
        bulk_writes.extend([self.pending] if self.pending else [])
        flush(self)

    monkeypatch.setattr(LinkWriter, "flush", counted)
    result = run_range(world, partition_key(handles[0], "mood"), partition_key(handles[2], "mood"))
    assert result.success
    # the run's links, gathered: one bulk write for the three partitions, every document linked
    assert bulk_writes == [6]
    for sub, _, did in users:
        moods = list(db["moods"].find({"user": sub}))
        assert {m["atproto"]["uri"] for m in moods} == {
            r["uri"] for r in records(world, did, "computer.aesthetic.mood")
        }
    keys = [partition_key(h, "mood") for h in handles]
    for asset in ("source_items", "media_blobs", "atproto_records"):
        assert sorted(by_partition(result, "ASSET_MATERIALIZATION", asset)) == sorted(keys), asset
    sources = by_partition(result, "ASSET_MATERIALIZATION", "source_items")
    assert all(m.metadata["partitions_in_run"].value == 3 for m in sources.values())
    synced = by_partition(result, "ASSET_MATERIALIZATION", "atproto_records")
    assert [synced[k].metadata["items"].value for k in keys] == [1, 2, 3]
    assert [synced[k].metadata["created"].value for k in keys] == [1, 2, 3]
    assert {synced[k].metadata["did"].value for k in keys} == {did for _, _, did in users}
    checks = by_partition(result, "ASSET_CHECK_EVALUATION")
    assert sorted(checks) == sorted(keys) and all(c.passed for c in checks.values())
    assert [checks[k].metadata["on_pds"].value for k in keys] == [1, 2, 3]
    for (_, _, did), n in zip(users, (1, 2, 3), strict=True):
        assert len(records(world, did, "computer.aesthetic.mood")) == n

    # the instance keeps each partition's own history: latest materialization and check per partition
    assert world.instance.get_materialized_partitions(atproto_records.key) >= set(keys)
    for key, n in zip(keys, (1, 2, 3), strict=True):
        record = world.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=atproto_records.key, asset_partitions=[key]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["desired"].value == n
        history = world.instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(atproto_records.key, CHECK), limit=10, partition_filter=PartitionKeyFilter(key=key)
        )
        assert [h.status.value for h in history] == ["SUCCEEDED"], key


def test_one_failing_partition_fails_alone_and_the_next_run_retries_it(world, three_users):
    db, users = three_users
    handles = [h for _, h, _ in users]
    bad_sub, bad_handle, bad_did = users[1]
    password = db["users"].find_one({"_id": bad_sub})["atproto"]["password"]
    world.client._sessions.clear()
    for path in (world.home / "sessions").glob("*"):
        path.unlink()  # the accounts' saved sessions would otherwise spare the wrong password a login
    db["users"].update_one({"_id": bad_sub}, {"$set": {"atproto.password": "not-the-password"}})
    keys = [partition_key(h, "mood") for h in handles]

    failed = run_range(world, keys[0], keys[2])
    assert not failed.success and failed.dagster_run.status == DagsterRunStatus.FAILURE
    synced = by_partition(failed, "ASSET_MATERIALIZATION", "atproto_records")
    assert sorted(synced) == sorted([keys[0], keys[2]])  # the others are recorded as materialized
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    named = failure.event_specific_data.user_failure_data.metadata["failed_partitions"].value
    assert list(named) == [keys[1]] and "login" in named[keys[1]] and "not-the-password" not in str(named)
    assert len(records(world, bad_did, "computer.aesthetic.mood")) == 0
    assert keys[1] not in world.instance.get_materialized_partitions(atproto_records.key)
    # the failed partition is not materialized, and its check fails with the reason
    status = world.instance.get_status_by_partition(atproto_records.key, keys, sync_partitions)
    assert status is not None and not str(status[keys[1]]).endswith("MATERIALIZED"), status
    assert str(status[keys[0]]).endswith("MATERIALIZED"), status
    checks = by_partition(failed, "ASSET_CHECK_EVALUATION")
    assert checks[keys[1]].passed is False and "login" in checks[keys[1]].metadata["sync_failed"].value
    assert checks[keys[0]].passed and checks[keys[2]].passed
    # one planned event per asset for the whole range (DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS)
    planned = world.instance.all_logs(failed.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    assert len(planned) == 3, planned

    db["users"].update_one({"_id": bad_sub}, {"$set": {"atproto.password": password}})
    again = run_range(world, keys[0], keys[2])
    assert again.success
    synced = by_partition(again, "ASSET_MATERIALIZATION", "atproto_records")
    assert synced[keys[1]].metadata["created"].value == 2
    # the two that were fine are proven converged: nothing listed or written for them
    assert synced[keys[0]].metadata["proven_converged"].value is True
    assert synced[keys[2]].metadata["proven_converged"].value is True
    assert len(records(world, bad_did, "computer.aesthetic.mood")) == 2


def test_a_rerun_proves_partitions_converged_in_the_run_and_a_full_run_reconciles(world, three_users):
    db, users = three_users
    handles = [h for _, h, _ in users]
    first = run_range(
        world, partition_key(handles[0], MEDIA_NAMES[0]), partition_key(handles[2], MEDIA_NAMES[-1])
    )
    assert first.success
    every = [partition_key(h, m) for h in handles for m in MEDIA_NAMES]
    assert sorted(by_partition(first, "ASSET_MATERIALIZATION", "atproto_records")) == sorted(every)
    heads = {did: head(world, did) for _, _, did in users}

    second = run_range(
        world, partition_key(handles[0], MEDIA_NAMES[0]), partition_key(handles[2], MEDIA_NAMES[-1])
    )
    assert second.success
    synced = by_partition(second, "ASSET_MATERIALIZATION", "atproto_records")
    assert all(m.metadata["proven_converged"].value for m in synced.values()), {
        k: m.metadata for k, m in synced.items()
    }
    checks = by_partition(second, "ASSET_CHECK_EVALUATION")
    assert sorted(checks) == sorted(every) and all(c.passed for c in checks.values())
    assert {did: head(world, did) for _, _, did in users} == heads

    # an edit is seen (the source changed); a full run lists and reconciles every partition
    sub = users[0][0]
    mood = db["moods"].find_one({"user": sub})
    db["moods"].update_one({"_id": mood["_id"]}, {"$set": {"mood": "edited"}})
    third = run_range(world, partition_key(handles[0], "mood"), partition_key(handles[2], "mood"))
    synced = by_partition(third, "ASSET_MATERIALIZATION", "atproto_records")
    assert synced[partition_key(handles[0], "mood")].metadata["updated"].value == 1
    assert synced[partition_key(handles[1], "mood")].metadata["proven_converged"].value is True
    full = run_range(
        world, partition_key(handles[0], "mood"), partition_key(handles[2], "mood"), **{FULL_TAG: "true"}
    )
    synced = by_partition(full, "ASSET_MATERIALIZATION", "atproto_records")
    assert not any(m.metadata["proven_converged"].value for m in synced.values())
    assert all(m.metadata["unchanged"].value == m.metadata["desired"].value for m in synced.values())


def test_our_writes_to_other_collections_keep_marks_and_a_foreign_write_voids_them(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "chain")
    add_moods(db, sub, ["one", "two"])
    add_pieces(db, sub, ["chained"])
    register_handles(world.instance, db)
    mood, piece = partition_key(handle, "mood"), partition_key(handle, "piece")
    assert run_range(world, mood, mood).success
    # the piece run writes to the same repository after the mood partition was marked: the write names
    # the commit it builds on (swapCommit), so the mood's mark carries over to the new commit
    assert run_range(world, piece, piece).success
    state = ConvergedState(world.home)
    rev, marks = state.load(did)
    assert rev == head(world, did) and set(marks) >= {"mood", "piece"}

    create_other_record(world, db, sub, did)
    assert state.valid_marks(did, head(world, did)) == {}
    state.close()
    after = run_range(world, mood, piece)
    synced = by_partition(after, "ASSET_MATERIALIZATION", "atproto_records")
    assert not any(m.metadata["proven_converged"].value for m in synced.values())


def test_partition_ranges_match_dagsters_own_range_semantics(world):
    order = [f"h{n}" for n in range(10)]
    world.instance.add_dynamic_partitions(handle_partitions.name, order)

    def members(r):
        keys = sync_partitions.get_partition_keys_in_range(
            PartitionKeyRange(r.start, r.end), dynamic_partitions_store=world.instance
        )
        return sorted(keys_of_run(keys))

    wanted = {(h, "mood") for h in ("h0", "h1", "h2", "h5")} | {("h3", m) for m in MEDIA_NAMES}
    ranges = partition_ranges(order, wanted, per_run=100)
    assert sorted(k for r in ranges for k in members(r)) == sorted(wanted)
    assert all(r.size == len(members(r)) for r in ranges)

    # per run: at most `per_run` partitions; whole accounts together when asked
    every = {(h, m) for h in order for m in MEDIA_NAMES}
    together = partition_ranges(order, every, per_run=20, media_together=True)
    accounts_per_run = 20 // len(MEDIA_NAMES)  # whole accounts: 3 of six media in 20
    assert len(together) == -(-len(order) // accounts_per_run) and all(
        len(members(r)) <= 20 for r in together
    )
    assert sorted(k for r in together for k in members(r)) == sorted(every)
    per_media = partition_ranges(order, every, per_run=4)
    assert len(per_media) == len(MEDIA_NAMES) * 3 and all(
        len({m for _, m in members(r)}) == 1 for r in per_media
    )

    # bridging gaps: fewer runs, covering the wanted ones and the handles between them
    sparse = {("h1", "mood"), ("h4", "mood"), ("h8", "mood")}
    assert len(partition_ranges(order, sparse)) == 3
    bridged = partition_ranges(order, sparse, bridge_gaps=True)
    assert len(bridged) == 1 and sparse <= set(members(bridged[0]))
    with pytest.raises(ValueError):
        partition_ranges(order, {("nobody", "mood")})


def test_range_runs_of_the_assets_share_one_backfill_policy():
    policies = {
        a.key.to_user_string(): a.backfill_policy for a in (source_items, media_blobs, atproto_records)
    }
    # README: "UI backfills put up to 250 partitions of one media type in a run
    # (`BackfillPolicy.multi_run(250)` on all three assets, so a backfill of the three puts them in one run)"
    shapes = {name: (p.policy_type, p.max_partitions_per_run) for name, p in policies.items()}
    assert set(shapes.values()) == {(BackfillPolicyType.MULTI_RUN, 250)}, shapes


def test_per_partition_check_evaluations_are_events_of_their_partitions():
    """Pinned: the record stage of a range run yields one AssetCheckEvaluation per partition, and the check's
    output once for all. Dagster records each as an ASSET_CHECK_EVALUATION event of its partition, and the
    instance keeps each partition's own check history (what the runner and the UI read)."""
    partitions = StaticPartitionsDefinition(["a", "b", "c"])

    @dagster_asset(
        partitions_def=partitions,
        check_specs=[AssetCheckSpec(CHECK, asset="ranged")],
        output_required=False,
        backfill_policy=BackfillPolicy.multi_run(10),
    )
    def ranged(context):  # unannotated: Dagster checks the annotation, a string in this module
        for key in context.partition_keys:
            yield AssetMaterialization(asset_key=context.asset_key, partition=key)
            yield AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=CHECK, passed=key != "b", partition=key
            )
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    check_key = AssetCheckKey(ranged.key, CHECK)
    job = Definitions(assets=[ranged], executor=in_process_executor).resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "c"},
        )
        assert result.success
        checks = {
            event.event_specific_data.partition: event.event_specific_data.passed
            for event in result.all_events
            if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
        }
        assert checks == {"a": True, "b": False, "c": True}
        for key, status in (("a", "SUCCEEDED"), ("b", "FAILED"), ("c", "SUCCEEDED")):
            history = instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=10, partition_filter=PartitionKeyFilter(key=key)
            )
            assert [h.status.value for h in history] == [status], key


def test_a_single_partition_run_still_works(world, three_users):
    """What a click on one partition in the UI launches: a run tagged with that one partition."""
    db, users = three_users
    key = partition_key(users[2][1], "mood")
    job = world.defs().resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=world.instance, partition_key=key, raise_on_error=False)
    assert result.success
    assert list(by_partition(result, "ASSET_MATERIALIZATION", "atproto_records")) == [key]
    assert [c.passed for c in by_partition(result, "ASSET_CHECK_EVALUATION").values()] == [True]
    assert len(records(world, users[2][2], "computer.aesthetic.mood")) == 3


def test_a_writer_starts_from_the_head_our_last_commit_made_and_recovers_when_it_is_stale(world, monkeypatch):
    """No getLatestCommit per applyWrites: the account's turn carries the head our last commit made. When
    another writer moved it, the swap fails unapplied (InvalidSwap) and the batch goes again on the PDS's."""
    from acpipeline.resources.pds import PdsClient, PdsError
    from acpipeline.sync import records as records_module

    db = world.db()
    sub, handle, did = add_user(world, db, "turns")
    add_moods(db, sub, ["one"])
    register_handles(world.instance, db)
    mood = partition_key(handle, "mood")
    assert run_range(world, mood, mood).success
    with account_turn(world.home / "locks", did) as turn:
        assert turn.head is not None and turn.head[1] == head(world, did)

    heads_asked, refused = [], []
    original_latest, original_apply = records_module.latest_commit, PdsClient.apply_writes

    def latest(client, did_):
        heads_asked.append(did_)
        return original_latest(client, did_)

    def apply_writes(self, session, body):
        try:
            return original_apply(self, session, body)
        except PdsError as exc:
            refused.append(exc.error)
            raise

    monkeypatch.setattr(records_module, "latest_commit", latest)
    monkeypatch.setattr(PdsClient, "apply_writes", apply_writes)
    add_moods(db, sub, ["two"])
    assert run_range(world, mood, mood).success
    assert (len(heads_asked), refused) == (0, [])  # no head read by the record stage: the turn's head

    # Another writer moves the head after the plan read the repository (a read before it would show its
    # commit: the first write builds on the newer of the turn's head and the read's).
    original_at, moved = RepoReads.at, []
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]

    def read_then_another_writes(self, did_, rev):
        snapshot = original_at(self, did_, rev)
        if not moved:  # in the record stage's account thread
            moved.append(write_as_another_tool(world, did, password))
        return snapshot

    monkeypatch.setattr(RepoReads, "at", read_then_another_writes)
    heads_asked.clear()
    add_moods(db, sub, ["three"])
    assert run_range(world, mood, mood).success and moved
    # stale: refused unapplied, then sent again on the head the PDS reports
    assert (len(heads_asked), refused) == (1, ["InvalidSwap"])
    with account_turn(world.home / "locks", did) as turn:
        assert turn.head is not None and turn.head[1] == head(world, did)
    moods = sorted(r["value"]["mood"] for r in records(world, did, "computer.aesthetic.mood"))
    assert moods == ["one", "three", "two"]
