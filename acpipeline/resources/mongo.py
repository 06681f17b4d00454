"""MongoDB through pymongo's API: the platform's server when `MONGODB_CONNECTION_STRING` is set, else an
embedded, file-backed store (litemongo: mongomock's engine on SQLite files under ACPIPELINE_HOME), which
every process Dagster starts shares."""

from __future__ import annotations

from typing import Any, TypeAlias

import pymongo
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from acpipeline.errors import OperatorError
from acpipeline.settings import DEFAULT_DATABASE, acpipeline_home

# The platform's documents as pymongo hands them out (the embedded store's client follows pymongo's API).
MongoClient: TypeAlias = pymongo.MongoClient[dict[str, Any]]
MongoDatabase: TypeAlias = Database[dict[str, Any]]
MongoCollection: TypeAlias = Collection[dict[str, Any]]


def embedded_path() -> str:
    """Where the embedded store keeps its files: under ACPIPELINE_HOME as the environment names it at the
    call."""
    return str(acpipeline_home() / "mongo")


# Bare, as Dagster documents: `ConfigurableResource[...]` would derive a pydantic generic class at run time.
class MongoResource(ConfigurableResource):  # type: ignore[type-arg]
    """`connection_string` None means the embedded store."""

    connection_string: str | None = None
    database: str = DEFAULT_DATABASE
    _client: MongoClient | None = PrivateAttr(default=None)

    @property
    def is_embedded(self) -> bool:
        return not self.connection_string

    def describe(self) -> str:
        if self.is_embedded:
            return f"embedded store at {embedded_path()} (database {self.database})"
        host = (self.connection_string or "").split("://", 1)[-1].split("@")[-1].split("/")[0].split("?")[0]
        return f"MongoDB at {host} (database {self.database})"

    def db(self) -> MongoDatabase:
        if self._client is None:
            self._client = self._connect()
        return self._client[self.database]

    def _connect(self) -> MongoClient:
        if self.is_embedded:
            import litemongo

            # litemongo is untyped; its client (mongomock's) answers pymongo's API.
            embedded: MongoClient = litemongo.connect(embedded_path(), tz_aware=True)
            return embedded
        try:
            # Invalid UTF-8 in a document is read as U+FFFD, which the item checks report as one failed
            # item, instead of an exception that would fail the whole partition.
            client: MongoClient = pymongo.MongoClient(
                self.connection_string,
                serverSelectionTimeoutMS=8000,
                tz_aware=True,
                unicode_decode_error_handler="replace",
            )
            client.admin.command("ping")
        except (ConfigurationError, ValueError) as exc:  # pymongo: ValueError for a port out of range
            raise OperatorError(f"MONGODB_CONNECTION_STRING is not a valid MongoDB URI ({exc})") from None
        except OperationFailure as exc:
            raise OperatorError(
                f"{self.describe()} refused the login ({exc.code}): check the user and password in "
                "MONGODB_CONNECTION_STRING"
            ) from None
        except PyMongoError:
            raise OperatorError(
                f"{self.describe()} is unreachable: check MONGODB_CONNECTION_STRING and the network"
            ) from None
        return client

    def teardown_after_execution(self, context: InitResourceContext | None) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
