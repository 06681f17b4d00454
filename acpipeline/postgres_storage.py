"""The production instance's storage: Dagster's Postgres storage, taking the URLs operators paste.

`dagster-postgres` installs the psycopg2 driver, while SQLAlchemy 2.1 maps a plain `postgresql://` URL
(what hosting providers hand out, and what `postgres_db:` parts become) to psycopg 3, which is not
installed: every Dagster command then fails with `No module named 'psycopg'`. This class names psycopg2
in the URL before handing it to `DagsterPostgresStorage`; a URL that already names a driver is kept.
`deploy/dagster.yaml` names it under `storage: custom:`.

Its event log initialises a pool's default limit with one upsert. Dagster's inserts the pool's row and, on
a duplicate key, updates it in the same transaction; PostgreSQL aborts a transaction at its first error, so
that update fails (`InFailedSqlTransaction`) and with it the step that claimed a slot. That happens when two
runs claim a slot of a pool the instance has not used yet at the same moment (warm Celery workers start
four at once) and whenever the configured default limit changes (dagster-io/dagster#33552, open).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.auth import PgTokenProvider
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy.dialects import postgresql

from acpipeline.settings import apply_dagster_env

DRIVER_SCHEME = "postgresql+psycopg2"
PLAIN_SCHEMES = ("postgresql", "postgres")  # `postgres://` is the older spelling some providers still use


def psycopg2_url(url: str) -> str:
    """`url` with the psycopg2 driver named: `postgresql://…` and `postgres://…` become
    `postgresql+psycopg2://…`; any other scheme (one naming a driver already) is left alone."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in PLAIN_SCHEMES:
        return f"{DRIVER_SCHEME}://{rest}"
    return url


class PostgresEventLog(PostgresEventLogStorage):
    """Dagster's Postgres event log, with a pool's default limit set in one upsert that concurrent runs cannot
    break."""

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        """Dagster's (`SqlEventLogStorage`), with its insert-or-update as one `INSERT ... ON CONFLICT`: the
        row is inserted, or updated when its limit differs, and locked either way, so concurrent callers
        take turns and each allocates the slots against what the other committed."""
        supported = (
            self.has_concurrency_limits_table and self.has_default_pool_limit_col and self.has_instance
        )
        default_limit = self._instance.global_op_concurrency_default_limit if supported else None
        if default_limit is None:  # older schemas, or no default (Dagster's deletes and inserts nothing)
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        self._reconcile_concurrency_limits_from_slots()
        limits = ConcurrencyLimitsTable.c
        upsert = postgresql.insert(ConcurrencyLimitsTable).values(
            concurrency_key=concurrency_key, limit=default_limit, using_default_limit=True
        )
        with self.index_transaction() as conn:
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[limits.concurrency_key],
                    set_={"limit": default_limit},
                    where=limits.limit != default_limit,
                )
            )
            self._allocate_concurrency_slots(conn, concurrency_key, default_limit)
        return True


class PostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` with the same configuration (`postgres_url`, or `postgres_db` parts), the
    driver named in the URL it connects with, and the event log above."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        # `DagsterPostgresStorage.__init__` with `PostgresEventLog` for its event log (pinned by a test):
        # building Dagster's first and replacing it would connect twice in every process that opens it.
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PostgresRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._event_log_storage = PostgresEventLog(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        super(DagsterPostgresStorage, self).__init__()  # type: ignore[no-untyped-call]  # Dagster's, unannotated

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresStorage:
        # Every process that opens the instance (webserver, daemon, runs) rehydrates this storage: Dagster's
        # settings for range runs reach the ones that create runs without deploy/acpipeline.env.
        apply_dagster_env()
        return cls(
            inst_data=inst_data,
            postgres_url=psycopg2_url(pg_url_from_config(config_value)),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
