"""The platform's PDS over XRPC: one HTTP connection pool, one session per account, retries with backoff.

Sessions are persisted (owner-only file permissions) under ACPIPELINE_HOME and refreshed in place, so a run
never logs in per record and consecutive runs reuse the same session instead of spending the PDS's
createSession allowance (30 per 5 minutes per account). Tokens and passwords never appear in errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from acpipeline.core.batches import encode_body
from acpipeline.errors import OperatorError
from acpipeline.settings import acpipeline_home

RETRY_STATUS = {429, 500, 502, 503, 504}


class PdsError(Exception):
    """A PDS call that failed for good; the message says what was called and what came back."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error


class TransientWriteError(PdsError):
    """An applyWrites call whose outcome is unknown (5xx, dropped connection): re-plan from a listing."""


def _jwt_exp(token: str) -> float:
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


@dataclass
class Session:
    did: str
    handle: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"did": self.did, "handle": self.handle, "accessJwt": self.access, "refreshJwt": self.refresh}


class PdsClient:
    """XRPC calls with retries: 429 waits for `ratelimit-reset`/`retry-after`; 5xx, timeouts and dropped
    connections back off exponentially with jitter, within `retry_budget_s`."""

    def __init__(self, url: str, timeout_s: float = 60.0, retry_budget_s: float = 120.0):
        self.url = url.rstrip("/")
        self.retry_budget_s = retry_budget_s
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._sessions: dict[str, Session] = {}
        self._session_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # -- transport -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        nsid: str,
        *,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        session: Session | None = None,
        basic_auth: tuple[str, str] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        tried: list[str] = []
        refreshed = False
        while True:
            attempt += 1
            headers = {"Content-Type": content_type} if body is not None else {}
            if session is not None:
                headers["Authorization"] = f"Bearer {session.access}"
            try:
                response = self.http.request(
                    method, f"/xrpc/{nsid}", params=params, content=body, headers=headers, auth=basic_auth
                )
            except httpx.TransportError as exc:
                outcome = f"{type(exc).__name__}"
                if isinstance(exc, httpx.ConnectError) and attempt == 1 and not tried:
                    raise OperatorError(
                        f"the PDS at {self.url} does not answer ({exc.__class__.__name__}): check PDS_URL"
                    ) from None
                if not idempotent:
                    raise TransientWriteError(f"{nsid}: {outcome}; outcome unknown") from None
                wait = self._backoff(attempt)
            else:
                if response.status_code < 400:
                    return response.json() if response.content else {}
                error, message = _error_of(response)
                if error in ("ExpiredToken", "InvalidToken") and session is not None and not refreshed:
                    self.refresh(session)
                    refreshed = True
                    continue
                outcome = f"HTTP {response.status_code} {error or ''}".strip()
                if response.status_code not in RETRY_STATUS:
                    raise PdsError(f"{nsid} failed: {outcome}: {message}", response.status_code, error)
                if response.status_code != 429 and not idempotent:
                    raise TransientWriteError(
                        f"{nsid}: {outcome}; outcome unknown", response.status_code, error
                    )
                wait = _rate_limit_wait(response) if response.status_code == 429 else self._backoff(attempt)
            tried.append(outcome)
            if time.monotonic() + wait > deadline:
                raise PdsError(
                    f"{nsid} failed after {attempt} attempts within {self.retry_budget_s:.0f} s: "
                    + ", ".join(tried)
                )
            time.sleep(wait)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(30.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())

    # -- sessions --------------------------------------------------------------------------------

    def session(self, did: str, password: str) -> Session:
        """The account's session: in memory, else the persisted one (refreshed if needed), else a login."""
        with self._session_lock:
            if did in self._sessions:
                return self._sessions[did]
            session = _load_session(did)
            now = time.time()
            if session and _jwt_exp(session.access) > now + 120:
                pass
            elif session and _jwt_exp(session.refresh) > now + 120:
                try:
                    self._refresh_locked(session)
                except PdsError:
                    session = None
            else:
                session = None
            if session is None:
                session = self._login(did, password)
            self._sessions[did] = session
            return session

    def _login(self, did: str, password: str) -> Session:
        try:
            data = self.call(
                "POST",
                "com.atproto.server.createSession",
                body=encode_body({"identifier": did, "password": password}),
            )
        except PdsError as exc:
            raise PdsError(
                f"login as {did} failed: HTTP {exc.status} {exc.error or ''}".strip(), exc.status, exc.error
            ) from None
        session = Session(data["did"], data.get("handle", ""), data["accessJwt"], data["refreshJwt"])
        _save_session(session)
        return session

    def refresh(self, session: Session) -> None:
        with self._session_lock:
            self._refresh_locked(session)

    def _refresh_locked(self, session: Session) -> None:
        # Refreshing revokes the old refresh token: persist the new pair at once.
        response = self.http.post(
            "/xrpc/com.atproto.server.refreshSession", headers={"Authorization": f"Bearer {session.refresh}"}
        )
        if response.status_code >= 400:
            error, _ = _error_of(response)
            raise PdsError(f"session refresh for {session.did} failed: HTTP {response.status_code} {error}")
        data = response.json()
        session.access, session.refresh = data["accessJwt"], data["refreshJwt"]
        _save_session(session)

    # -- calls -----------------------------------------------------------------------------------

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

    def upload_blob(self, session: Session, data: bytes, mime_type: str) -> dict[str, Any]:
        return self.call(
            "POST", "com.atproto.repo.uploadBlob", body=data, content_type=mime_type, session=session
        )["blob"]

    def apply_writes(self, session: Session, body: bytes) -> dict[str, Any]:
        return self.call("POST", "com.atproto.repo.applyWrites", body=body, session=session, idempotent=False)

    def create_account(self, handle: str, password: str, email: str) -> str:
        data = self.call(
            "POST",
            "com.atproto.server.createAccount",
            body=encode_body({"handle": handle, "password": password, "email": email}),
            idempotent=False,
        )
        _save_session(Session(data["did"], data["handle"], data["accessJwt"], data["refreshJwt"]))
        return data["did"]


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    try:
        data = response.json()
        return data.get("error"), str(data.get("message", ""))[:300]
    except ValueError:
        return None, response.text[:200]


def _rate_limit_wait(response: httpx.Response) -> float:
    retry_after = response.headers.get("retry-after")
    if retry_after and retry_after.isdigit():
        return float(retry_after) + random.random() * 0.5
    reset = response.headers.get("ratelimit-reset")
    if reset and reset.isdigit():
        return max(0.5, float(reset) - time.time()) + random.random() * 0.5
    return 1.0 + random.random()


def _session_path(did: str):
    folder = acpipeline_home() / "sessions"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{hashlib.sha256(did.encode()).hexdigest()[:24]}.json"


def _save_session(session: Session) -> None:
    path = _session_path(session.did)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(session.as_json(), fh)
    os.replace(tmp, path)


def _load_session(did: str) -> Session | None:
    try:
        data = json.loads(_session_path(did).read_text())
        return Session(data["did"], data["handle"], data["accessJwt"], data["refreshJwt"])
    except (OSError, ValueError, KeyError):
        return None


class PdsResource(ConfigurableResource):
    """The platform's PDS (`PDS_URL`); `PDS_ADMIN_PASSWORD` is only needed to create accounts."""

    url: str | None = None
    admin_password: str | None = None
    retry_budget_s: float = 120.0
    _client: PdsClient | None = PrivateAttr(default=None)

    def client(self) -> PdsClient:
        if not self.url:
            raise OperatorError("PDS_URL is not set: export PDS_URL=https://at.aesthetic.computer")
        if self._client is None:
            self._client = PdsClient(self.url, retry_budget_s=self.retry_budget_s)
        return self._client

    def teardown_after_execution(self, context: Any) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
