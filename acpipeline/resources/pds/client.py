"""The XRPC calls the pipeline makes, and the Dagster resource that hands out one client per run."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from acpipeline.core.batches import encode_body
from acpipeline.errors import OperatorError
from acpipeline.resources.pds.repo import DEFAULT_REPO_LIMITS, RepoError, RepoLimits, RepoSnapshot, parse_repo
from acpipeline.resources.pds.sessions import Session, Sessions, _save_session
from acpipeline.resources.pds.transport import APPLY_WRITES, BodyTooLarge


class PdsClient(Sessions):
    """The platform's PDS: the transport's retries and throttle, each account's session, and the calls."""

    def describe_server(self) -> dict[str, Any]:
        return self.call("GET", "com.atproto.server.describeServer")

    def list_records(self, did: str, collection: str) -> list[dict[str, Any]]:
        """Every record of the collection (`uri`, `cid`, `value`), following cursors."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"repo": did, "collection": collection, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = self.call("GET", "com.atproto.repo.listRecords", params=params)
            records.extend(page.get("records", []))
            cursor = page.get("cursor")
            if not cursor or not page.get("records"):
                return records

    def get_repo(self, did: str, limits: RepoLimits | None = None) -> RepoSnapshot:
        """Every record of the account at its latest commit, from one getRepo CAR: streamed and refused
        past `limits.max_bytes`, then checked (`parse_repo`). RepoError for a CAR that is refused."""
        limits = limits or DEFAULT_REPO_LIMITS
        try:
            response = self.send(
                "GET", "com.atproto.sync.getRepo", params={"did": did}, max_bytes=limits.max_bytes
            )
        except BodyTooLarge as exc:
            raise RepoError(f"repository of {did}: {exc}", exc.status) from None
        return parse_repo(response.content, did, limits)

    def get_blob(self, did: str, cid: str) -> bytes:
        return self.send("GET", "com.atproto.sync.getBlob", params={"did": did, "cid": cid}).content

    def upload_blob(self, session: Session, data: bytes, mime_type: str) -> dict[str, Any]:
        answer = self.call(
            "POST", "com.atproto.repo.uploadBlob", body=data, content_type=mime_type, session=session
        )
        blob: dict[str, Any] = answer["blob"]
        return blob

    def apply_writes(self, session: Session, body: bytes) -> dict[str, Any]:
        return self.call("POST", APPLY_WRITES, body=body, session=session, idempotent=False)

    def create_account(self, handle: str, password: str, email: str) -> str:
        data = self.call(
            "POST",
            "com.atproto.server.createAccount",
            body=encode_body({"handle": handle, "password": password, "email": email}),
            idempotent=False,
        )
        _save_session(Session(data["did"], data["handle"], data["accessJwt"], data["refreshJwt"]))
        return str(data["did"])


# Bare, as Dagster documents: `ConfigurableResource[...]` would derive a pydantic generic class at run time.
class PdsResource(ConfigurableResource):  # type: ignore[type-arg]
    """The platform's PDS (`PDS_URL`); `PDS_ADMIN_PASSWORD` is only needed to create accounts.
    `retry_budget_s` None: `ACPIPELINE_PDS_RETRY_BUDGET_S`, else 120 s per call. The rate-limit bypass key
    is read by the client from `ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY` in the run's process, never through
    Dagster's config, so it cannot reach run config, the event log or the UI."""

    url: str | None = None
    admin_password: str | None = None
    retry_budget_s: float | None = None
    _client: PdsClient | None = PrivateAttr(default=None)

    def client(self) -> PdsClient:
        if not self.url:
            raise OperatorError("PDS_URL is not set: export PDS_URL=https://at.aesthetic.computer")
        if self._client is None:
            self._client = PdsClient(self.url, retry_budget_s=self.retry_budget_s)
        return self._client

    def teardown_after_execution(self, context: InitResourceContext | None) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
