"""The production instance's storage against a real PostgreSQL server: the plain URL operators paste, and
the URL's parts given separately, both through `deploy/dagster.yaml`'s storage class."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage

from acpipeline.dagster_compat import kv_get, kv_set
from acpipeline.postgres_storage import PostgresStorage, psycopg2_url

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
