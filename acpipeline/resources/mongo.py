"""MongoDB through pymongo's API: the platform's server when `MONGODB_CONNECTION_STRING` is set, else an
embedded, file-backed store (litemongo: mongomock's engine on SQLite files under ACPIPELINE_HOME), which
every process Dagster starts shares."""

from __future__ import annotations

from typing import Any

import pymongo
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from acpipeline.errors import OperatorError
from acpipeline.settings import DEFAULT_DATABASE, acpipeline_home


def embedded_path() -> str:
    return str(acpipeline_home() / "mongo")


class MongoResource(ConfigurableResource):
    """`connection_string` None means the embedded store."""

    connection_string: str | None = None
    database: str = DEFAULT_DATABASE
    _client: Any = PrivateAttr(default=None)

    @property
    def is_embedded(self) -> bool:
        return not self.connection_string

    def describe(self) -> str:
        if self.is_embedded:
            return f"embedded store at {embedded_path()} (database {self.database})"
        host = self.connection_string.split("://", 1)[-1].split("@")[-1].split("/")[0].split("?")[0]
        return f"MongoDB at {host} (database {self.database})"

    def db(self) -> Database:
        if self._client is None:
            self._client = self._connect()
        return self._client[self.database]

    def _connect(self) -> Any:
        if self.is_embedded:
            import litemongo

            return litemongo.connect(embedded_path(), tz_aware=True)
        try:
            # Invalid UTF-8 in a document is read as U+FFFD, which the item checks report as one failed
            # item, instead of an exception that would fail the whole partition.
            client = pymongo.MongoClient(
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

    def teardown_after_execution(self, context: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
