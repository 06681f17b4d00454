"""The project's event log (`acpipeline.event_log`): Dagster's SQLite storage with kept connections and
one-transaction batches. It must store exactly what Dagster's own class stores, keep files either class can
read, survive a fork, and be what a range run actually uses for its materializations."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    Output,
    StaticPartitionsDefinition,
    asset,
    in_process_executor,
    mem_io_manager,
)
from dagster._core.events import (
    AssetCheckEvaluationPlanned,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from acpipeline import event_log
from acpipeline.event_log import PooledSqliteEventLogStorage
from acpipeline.instance import PROJECT_DAGSTER_YAML

KEY = AssetKey("atproto_records")
CHECK = AssetCheckKey(KEY, "holds")


def _entry(run_id: str, kind: DagsterEventType, data: object) -> EventLogEntry:
    dagster_event = DagsterEvent(event_type_value=kind.value, job_name="job", event_specific_data=data)
    return EventLogEntry(
        error_info=None,
        level=20,
        user_message="",
        run_id=run_id,
        timestamp=time.time(),
        dagster_event=dagster_event,
    )


def _materialization(run_id: str, partition: str, n: int) -> EventLogEntry:
    event = AssetMaterialization(asset_key=KEY, partition=partition, metadata={"n": n}, tags={"t": "v"})
    return _entry(run_id, DagsterEventType.ASSET_MATERIALIZATION, StepMaterializationData(event))


def _check(run_id: str, partition: str, passed: bool) -> EventLogEntry:
    evaluation = AssetCheckEvaluation(
        asset_key=KEY, check_name=CHECK.name, passed=passed, partition=partition, metadata={"p": partition}
    )
    return _entry(run_id, DagsterEventType.ASSET_CHECK_EVALUATION, evaluation)


def _stored(storage: SqliteEventLogStorage, run_id: str) -> dict:
    """What a reader sees: the run's log, the asset's materializations and partitions, its latest one."""
    run_log = storage.get_records_for_run(run_id).records
    records = storage.fetch_materializations(AssetRecordsFilter(asset_key=KEY), limit=10_000).records
    latest = storage.get_latest_materialization_events([KEY])[KEY]
    return {
        "run_log": [record.event_log_entry.dagster_event.partition for record in run_log],
        "materializations": sorted(
            (r.partition_key, r.asset_materialization.metadata["n"].value) for r in records
        ),
        "partitions": sorted(storage.get_materialized_partitions(KEY)),
        "latest": (latest.dagster_event.partition, latest.asset_materialization.metadata["n"].value),
    }


def test_the_project_instance_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    shutil.copy(PROJECT_DAGSTER_YAML, tmp_path / "dagster.yaml")
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert type(storage) is PooledSqliteEventLogStorage
        assert Path(storage._base_dir) == tmp_path / "history" / "runs"  # where Dagster's default keeps it


@pytest.mark.parametrize("batched", [False, True])
def test_stores_what_dagsters_own_class_stores(tmp_path, batched):
    events = [_materialization("run-1", f"user{i}|mood", i) for i in range(40)]
    ours = PooledSqliteEventLogStorage(str(tmp_path / "ours"))
    theirs = SqliteEventLogStorage(str(tmp_path / "theirs"))
    if batched:
        ours.store_event_batch(events)
    else:
        for event in events:
            ours.store_event(event)
    for event in events:
        theirs.store_event(event)
    expected = _stored(theirs, "run-1")
    assert len(expected["materializations"]) == 40
    assert _stored(ours, "run-1") == expected
    # the same files: Dagster's class reads what ours wrote
    assert _stored(SqliteEventLogStorage(str(tmp_path / "ours")), "run-1") == expected


def _checks(storage: SqliteEventLogStorage) -> list[tuple]:
    """The check's executions as the UI reads them: partition, run, status, the evaluation's event."""
    history = storage.get_asset_check_execution_history(CHECK, limit=10_000)
    return sorted(
        (
            r.partition or "",
            r.run_id,
            r.status.value,
            r.event.dagster_event.event_type_value if r.event else "",
        )
        for r in history
    )


@pytest.mark.timeout(60)  # a deadlock fails it
def test_a_batch_of_materializations_and_check_evaluations_stores_what_dagster_stores(tmp_path):
    """The record stage's batch: each partition's materialization and check evaluation, after the run's
    planned check. The same runs' log, asset rows and check executions as Dagster's class one event at a
    time; a check evaluation's writes join the batch's transaction (a second connection would deadlock)."""
    planned = _entry(
        "run-1",
        DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
        AssetCheckEvaluationPlanned(asset_key=KEY, check_name=CHECK.name),
    )
    events = []
    for i in range(30):
        events += [
            _materialization("run-1", f"user{i}|mood", i),
            _check("run-1", f"user{i}|mood", i % 7 != 3),
        ]
    ours = PooledSqliteEventLogStorage(str(tmp_path / "ours"))
    theirs = SqliteEventLogStorage(str(tmp_path / "theirs"))
    for storage in (ours, theirs):
        storage.store_event(planned)
    ours.store_event_batch(events)
    for event in events:
        theirs.store_event(event)
    expected = _stored(theirs, "run-1")
    assert len(expected["materializations"]) == 30 and expected["latest"] == ("user29|mood", 29)
    assert _stored(ours, "run-1") == expected
    assert len(_checks(theirs)) == 31  # the planned row, and one per partition
    assert _checks(ours) == _checks(theirs)
    assert _checks(SqliteEventLogStorage(str(tmp_path / "ours"))) == _checks(theirs)


def _schema(path: Path) -> dict:
    """A SQLite file's tables, indexes and their SQL, its Alembic revision and its journal mode."""
    with sqlite3.connect(path) as conn:
        return {
            "objects": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()),
            "revision": conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            "journal": conn.execute("PRAGMA journal_mode").fetchone(),
        }


def test_a_new_run_shard_is_a_copy_of_dagsters_own(tmp_path, monkeypatch):
    """A new run's shard comes from the template, not from Dagster's `_initdb` once per run: the same tables,
    indexes, Alembic revision and WAL mode as Dagster's class makes, and Dagster's class reads it."""
    ours = PooledSqliteEventLogStorage(str(tmp_path / "ours"))
    theirs = SqliteEventLogStorage(str(tmp_path / "theirs"))
    ours.store_event(_materialization("run-1", "a|mood", 1))  # the first run shard also makes the template
    made: list[object] = []
    monkeypatch.setattr(
        PooledSqliteEventLogStorage, "_initdb", lambda self, engine, **kw: made.append(engine)
    )
    for n in range(2, 5):
        ours.store_event(_materialization(f"run-{n}", "a|mood", n))
        theirs.store_event(_materialization(f"run-{n}", "a|mood", n))
    assert made == []  # no run shard was built statement by statement
    for n in range(2, 5):
        assert _schema(tmp_path / "ours" / f"run-{n}.db") == _schema(tmp_path / "theirs" / f"run-{n}.db")
        assert _stored(SqliteEventLogStorage(str(tmp_path / "ours")), f"run-{n}")["run_log"] == ["a|mood"]
    # the template is no run to Dagster, and nothing staged is left behind
    assert sorted(SqliteEventLogStorage(str(tmp_path / "ours")).get_all_run_ids()) == [
        f"run-{n}" for n in range(1, 5)
    ]
    assert not [p.name for p in (tmp_path / "ours").iterdir() if "staged" in p.name or "-tmp" in p.name]


def test_a_run_shard_another_process_made_is_never_replaced(tmp_path):
    theirs = SqliteEventLogStorage(str(tmp_path))
    theirs.store_event(_materialization("run-1", "theirs|mood", 1))
    ours = PooledSqliteEventLogStorage(str(tmp_path))
    ours.store_event(_materialization("run-1", "ours|mood", 2))
    assert _stored(theirs, "run-1")["run_log"] == ["theirs|mood", "ours|mood"]


def test_a_mixed_batch_goes_event_by_event(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    events = [_materialization("run-a", "a|mood", 1), _materialization("run-b", "b|mood", 2)]
    storage.store_event_batch(events)
    assert _stored(storage, "run-a")["run_log"] == ["a|mood"]
    assert _stored(storage, "run-b")["run_log"] == ["b|mood"]


def test_keeps_a_bounded_number_of_connections(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    for n in range(3 * event_log.RUN_SHARDS_KEPT):
        storage.store_event(_materialization(f"run-{n}", f"user{n}|mood", n))
    assert len(storage._engines) == event_log.RUN_SHARDS_KEPT + 1  # the run shards kept, and the index
    assert len(_stored(storage, "run-0")["materializations"]) == 3 * event_log.RUN_SHARDS_KEPT


def test_wipe_closes_its_connections_first(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    storage.store_event(_materialization("run-1", "a|mood", 1))
    storage.wipe()
    assert set(storage._engines) <= {"index"}  # the run's shard file is gone, and its engine with it
    storage.store_event(_materialization("run-1", "b|mood", 2))
    assert _stored(storage, "run-1")["run_log"] == ["b|mood"]
    assert _stored(storage, "run-1")["partitions"] == ["b|mood"]


def test_a_forked_child_writes_through_its_own_connections(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    storage.store_event(_materialization("run-1", "parent|mood", 1))  # the parent's connections are open
    pid = os.fork()
    if pid == 0:  # the child: write through the same storage object, then leave without cleanup
        code = 1
        try:
            assert not storage._engines
            storage.store_event_batch([_materialization("run-1", f"child{i}|mood", i) for i in range(5)])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    storage.store_event(_materialization("run-1", "parent2|mood", 2))
    stored = _stored(SqliteEventLogStorage(str(tmp_path)), "run-1")
    assert stored["run_log"] == ["parent|mood"] + [f"child{i}|mood" for i in range(5)] + ["parent2|mood"]


PARTITIONS = StaticPartitionsDefinition([f"user{i}|mood" for i in range(30)])


@asset(partitions_def=PARTITIONS)
def ranged(context) -> Output[int]:
    return Output(len(context.partition_keys))


def test_a_range_run_hands_its_materializations_over_in_batches(tmp_path, monkeypatch):
    """Pins the Dagster behaviour the speed-up rests on: with DAGSTER_EVENT_BATCH_SIZE set, a range output's
    per-partition materializations reach `store_event_batch`, in batches of at most that size."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "12")
    shutil.copy(PROJECT_DAGSTER_YAML, tmp_path / "dagster.yaml")
    batches: list[int] = []
    original = PooledSqliteEventLogStorage.store_event_batch

    def counted(self, events):
        batches.append(len(events))
        original(self, events)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event_batch", counted)
    job = Definitions(
        assets=[ranged], executor=in_process_executor, resources={"io_manager": mem_io_manager}
    ).resolve_implicit_global_asset_job_def()
    with DagsterInstance.get() as instance:
        keys = PARTITIONS.get_partition_keys()
        result = job.execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        )
        assert result.success
        assert batches == [12, 12, 6]
        assert instance.get_materialized_partitions(AssetKey("ranged")) == set(keys)
