"""PDS sessions: one per account, persisted and refreshed in place, so a run never logs in per record and
consecutive runs reuse the same session instead of spending the PDS's createSession allowance (30 per 5
minutes per account). Tokens and passwords never appear in errors.

Persisted under ACPIPELINE_HOME/sessions (owner-only file permissions) or, with
`ACPIPELINE_SHARED_STATE=mongodb`, in `acpipeline-sessions` (one document per account, beside the platform's
`users` that hold the passwords; never in Dagster's storage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from acpipeline.core.batches import encode_body
from acpipeline.errors import OperatorError
from acpipeline.resources import shared_state
from acpipeline.resources.pds.transport import PdsError, Transport
from acpipeline.settings import acpipeline_home


@dataclass
class Session:
    """One account's session tokens, kept out of its repr and refreshed in place; `as_json` is the saved form
    (createSession's names)."""

    did: str
    handle: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"did": self.did, "handle": self.handle, "accessJwt": self.access, "refreshJwt": self.refresh}


class Sessions(Transport):
    """The transport, and each account's session: in memory, else persisted, else a login."""

    def __init__(self, url: str, **options: Any) -> None:
        """`options`: the transport's (`timeout_s`, `retry_budget_s`, `sleep`, `ratelimit_bypass_key`)."""
        super().__init__(url, **options)
        self._sessions: dict[str, Session] = {}
        self._passwords: dict[str, str] = {}
        self._session_lock = threading.Lock()

    def session(self, did: str, password: str) -> Session:
        """The account's session: in memory, else the persisted one (refreshed if needed), else a login."""
        with self._session_lock:
            self._passwords[did] = password
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
            raise PdsError(f"login as {did} failed: {exc}", exc.status, exc.error) from None
        session = Session(data["did"], data.get("handle", ""), data["accessJwt"], data["refreshJwt"])
        _save_session(session)
        return session

    def _renew(self, session: Session, stale_access: str) -> None:
        """A call was refused for its access token: refresh (once for all threads that saw the same token),
        or log in again when the refresh token is refused too and the password is known."""
        with self._session_lock:
            if session.access != stale_access:
                return  # another thread refreshed it meanwhile
            try:
                self._refresh_locked(session)
            except PdsError as exc:
                password = self._passwords.get(session.did)
                if password is None or exc.status not in (400, 401):
                    raise
                fresh = self._login(session.did, password)
                session.access, session.refresh = fresh.access, fresh.refresh

    def _refresh_locked(self, session: Session) -> None:
        # Refreshing revokes the old refresh token (after a grace period, so a retry after a lost answer is
        # still accepted): persist the new pair at once.
        try:
            data = self.call("POST", "com.atproto.server.refreshSession", bearer=session.refresh)
        except PdsError as exc:
            message = f"session refresh for {session.did} failed: {exc}"
            raise PdsError(message, exc.status, exc.error) from None
        session.access, session.refresh = data["accessJwt"], data["refreshJwt"]
        _save_session(session)


def _jwt_exp(token: str) -> float:
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


def _session_path(did: str) -> Path:
    folder = acpipeline_home() / "sessions"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
    return folder / f"{hashlib.sha256(did.encode()).hexdigest()[:24]}.json"


def _save_session(session: Session) -> None:
    """Written owner-only (0600) and atomically: a crash leaves the old pair or the new one, never half.
    With `ACPIPELINE_SHARED_STATE=mongodb`: the account's document in MongoDB, replaced in one write."""
    if shared_state.in_mongodb():
        _mongodb_sessions("saving", session.did, lambda sessions: sessions.replace_one(
            {"_id": session.did}, {**session.as_json(), "savedAt": datetime.now(UTC)}, upsert=True
        ))  # fmt: skip
        return
    path = _session_path(session.did)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a leftover temp file had other permissions
    with os.fdopen(fd, "w") as fh:
        json.dump(session.as_json(), fh)
    os.replace(tmp, path)


def _load_session(did: str) -> Session | None:
    try:
        if shared_state.in_mongodb():
            data = _mongodb_sessions("reading", did, lambda sessions: sessions.find_one({"_id": did}))
            if data is None:
                return None
        else:
            data = json.loads(_session_path(did).read_text())
        return Session(data["did"], data["handle"], data["accessJwt"], data["refreshJwt"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mongodb_sessions(doing: str, did: str, action: Callable[[Any], Any]) -> Any:
    """`action` on the sessions collection; a MongoDB error becomes one line naming the account, never the
    document (it holds the tokens)."""
    try:
        return action(shared_state.collection(shared_state.SESSIONS))
    except PyMongoError as exc:
        raise OperatorError(
            f"{doing} the PDS session of {did} in MongoDB failed ({type(exc).__name__}): check "
            f"MONGODB_CONNECTION_STRING, or unset {shared_state.SHARED_STATE_ENV} to keep sessions on this "
            "machine"
        ) from None
