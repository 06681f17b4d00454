"""The production instance's storage against a real PostgreSQL server: the plain URL operators paste, and
the URL's parts given separately, both through `deploy/dagster.yaml`'s storage class."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage

from acpipeline.dagster_compat import kv_get, kv_set
from acpipeline.postgres_storage import PostgresEventLog, PostgresStorage, psycopg2_url
from acpipeline.settings import DAGSTER_ENV

PROJECT = Path(__file__).resolve().parents[1]


def test_plain_urls_name_the_installed_driver():
    assert psycopg2_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert psycopg2_url("postgres://u@h/d?sslmode=require") == "postgresql+psycopg2://u@h/d?sslmode=require"
    assert psycopg2_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert psycopg2_url("postgresql+pg8000://u@h/d") == "postgresql+pg8000://u@h/d"


def _instance(home: Path, storage_config: dict) -> DagsterInstance:
    """An instance from `deploy/dagster.yaml` with its storage configuration replaced by `storage_config`."""
    config = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"] = storage_config
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))


def _round_trip(instance: DagsterInstance) -> None:
    """The three storages answer: runs, the event log (dynamic partitions), and the key-value store the
    sensor keeps its requests in."""
    assert instance.get_ref().storage_data.class_name == PostgresStorage.__name__
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert instance.get_runs_count() == 0
    instance.add_dynamic_partitions("handle", ["a.at.aesthetic.computer"])
    assert instance.get_dynamic_partitions("handle") == ["a.at.aesthetic.computer"]
    kv_set(instance, {"acpipeline/postgres-test": "written"})
    assert kv_get(instance, {"acpipeline/postgres-test"}) == {"acpipeline/postgres-test": "written"}


@pytest.mark.parametrize("form", ["url", "parts"])
def test_the_deploy_storage_works_with_a_plain_url_and_with_parts(postgres, tmp_path, monkeypatch, form):
    db = postgres.create_database(f"storage_{form}")
    if form == "url":
        monkeypatch.setenv("DAGSTER_PG_URL", postgres.url(db))  # plain `postgresql://`, no driver named
        config = {"postgres_url": {"env": "DAGSTER_PG_URL"}}
    else:
        monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
        config = {
            "postgres_db": {
                "username": postgres.user,
                "hostname": {"env": "DAGSTER_PG_HOST"},
                "port": postgres.port,
                "db_name": db,
            }
        }
    with _instance(tmp_path / "dagster_home", config) as instance:
        _round_trip(instance)
    with postgres.connect(db) as connection, connection.cursor() as cursor:
        cursor.execute("select value from kvs where key = 'acpipeline/postgres-test'")
        assert cursor.fetchall() == [("written",)]


def _pooled_instance(postgres, tmp_path: Path, db: str, name: str, default_limit: int) -> DagsterInstance:
    config = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"] = {"postgres_url": postgres.url(db)}
    config["concurrency"]["pools"]["default_limit"] = default_limit
    home = tmp_path / name
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))


def test_runs_first_claiming_a_pool_at_once_all_get_its_default_limit(postgres, tmp_path):
    """Eight processes' storages initialise a pool none of them used before at the same moment (warm
    workers starting runs together): none fails, and the pool has its default limit, once."""
    db = postgres.create_database("pool_race")
    instances = [_pooled_instance(postgres, tmp_path, db, f"home{n}", 2) for n in range(8)]
    try:
        for instance in instances:
            assert isinstance(instance.event_log_storage, PostgresEventLog)
        start = threading.Barrier(len(instances))

        def initialise(instance: DagsterInstance) -> bool:
            start.wait()
            return instance.event_log_storage.initialize_concurrency_limit_to_default("pds_writes")

        with ThreadPoolExecutor(len(instances)) as pool:
            assert list(pool.map(initialise, instances)) == [True] * len(instances)
        info = instances[0].event_log_storage.get_concurrency_info("pds_writes")
        assert (info.slot_count, info.limit) == (2, 2), info
    finally:
        for instance in instances:
            instance.dispose()


def test_a_changed_default_limit_reaches_a_pool_already_in_use(postgres, tmp_path):
    """The operator raises `pools: default_limit` from 2 to 3: the next claim's initialisation updates the
    pool (Dagster's own fails there on PostgreSQL, dagster-io/dagster#33552)."""
    db = postgres.create_database("pool_limit_change")
    with _pooled_instance(postgres, tmp_path, db, "before", 2) as before:
        assert before.event_log_storage.initialize_concurrency_limit_to_default("pds_writes")
        assert before.event_log_storage.get_concurrency_info("pds_writes").slot_count == 2
    with _pooled_instance(postgres, tmp_path, db, "after", 3) as after:
        assert after.event_log_storage.initialize_concurrency_limit_to_default("pds_writes")
        info = after.event_log_storage.get_concurrency_info("pds_writes")
        assert (info.slot_count, info.limit) == (3, 3), info
        assert after.event_log_storage.initialize_concurrency_limit_to_default("pds_writes")  # unchanged
        assert after.event_log_storage.get_concurrency_info("pds_writes").slot_count == 3


def test_the_storage_is_built_as_dagsters_with_its_own_event_log(postgres):
    """`PostgresStorage.__init__` repeats `DagsterPostgresStorage.__init__` with another event log class:
    a Dagster upgrade that builds its storage differently fails here."""
    url = psycopg2_url(postgres.url(postgres.create_database("storage_init")))
    dagsters, ours = DagsterPostgresStorage(url), PostgresStorage(url)
    try:
        assert set(vars(ours)) == set(vars(dagsters)), set(vars(ours)) ^ set(vars(dagsters))
        for name, value in vars(dagsters).items():
            mine = vars(ours)[name]
            if name == "_event_log_storage":
                assert type(mine) is PostgresEventLog and isinstance(mine, type(value))
            elif name in ("_run_storage", "_schedule_storage"):
                assert type(mine) is type(value)
            else:
                assert mine == value, name
    finally:
        for storage in (dagsters, ours):
            for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
                part.dispose()


def test_a_process_opening_the_deploy_instance_gets_dagsters_settings_for_range_runs(
    postgres, tmp_path, monkeypatch
):
    """The runs, daemon and webserver of deploy/ take Dagster's settings from opening the instance, not
    from importing the code location (which changes no setting)."""
    for name in DAGSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    config = {"postgres_url": postgres.url(postgres.create_database("settings"))}
    with _instance(tmp_path / "dagster_home", config) as instance:
        assert isinstance(instance.event_log_storage, PostgresEventLog)
        assert {name: os.environ.get(name) for name in DAGSTER_ENV} == DAGSTER_ENV
