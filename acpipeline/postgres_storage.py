"""The production instance's storage: Dagster's Postgres storage, taking the URLs operators paste.

`dagster-postgres` installs the psycopg2 driver, while SQLAlchemy 2.1 maps a plain `postgresql://` URL
(what hosting providers hand out, and what `postgres_db:` parts become) to psycopg 3, which is not
installed: every Dagster command then fails with `No module named 'psycopg'`. This class names psycopg2
in the URL before handing it to `DagsterPostgresStorage`; a URL that already names a driver is kept.
`deploy/dagster.yaml` names it under `storage: custom:`.
"""

from __future__ import annotations

from dagster._core.storage.config import PostgresStorageConfig
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

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


class PostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` with the same configuration (`postgres_url`, or `postgres_db` parts) and
    the driver named in the URL it connects with."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
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
