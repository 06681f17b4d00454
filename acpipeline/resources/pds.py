"""The platform's PDS over XRPC: one HTTP connection pool, one session per account, retries with backoff.

Sessions are persisted (owner-only file permissions) under ACPIPELINE_HOME and refreshed in place, so a run
never logs in per record and consecutive runs reuse the same session instead of spending the PDS's
createSession allowance (30 per 5 minutes per account). Tokens and passwords never appear in errors.

When the PDS signals pressure (429, or `ratelimit-remaining` near zero) every client of that PDS slows down,
not only the one that was told: a "not before" time per PDS host is shared in this process and, through a
small file under ACPIPELINE_HOME/throttle, with every other process (concurrent Dagster runs).

With `ACPIPELINE_SHARED_STATE=mongodb` (runs on several machines, or in containers with an empty
ACPIPELINE_HOME each) both live in MongoDB instead: the sessions in `acpipeline-sessions` (one document per
account, beside the platform's `users` that hold the passwords; never in Dagster's storage), the throttle in
`acpipeline-throttle` (one document per PDS host, read at most once a second per process).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from pymongo.errors import DuplicateKeyError, PyMongoError

from acpipeline.core.batches import encode_body
from acpipeline.errors import OperatorError
from acpipeline.resources import shared_state
from acpipeline.resources.tls import tls_context
from acpipeline.settings import acpipeline_home

RETRY_STATUS = {429, 500, 502, 503, 504}
TOKEN_ERRORS = ("ExpiredToken", "InvalidToken")
DEFAULT_RETRY_BUDGET_S = 120.0
RETRY_BUDGET_ENV = "ACPIPELINE_PDS_RETRY_BUDGET_S"
# Below this share of `ratelimit-limit` left in the window, calls are spread over what remains of it.
PRESSURE_SHARE = 0.02
# With the throttle in MongoDB, a process reads the shared time at most this often (its own holds at once).
SHARED_THROTTLE_READ_S = 1.0
# Calls that write to a repository: the PDS limits them per account (points per hour and per day).
REPO_WRITES = frozenset(
    f"com.atproto.repo.{name}" for name in ("applyWrites", "createRecord", "putRecord", "deleteRecord")
)
APPLY_WRITES = "com.atproto.repo.applyWrites"
# Errors raised before the request left this machine: safe to retry even for a write.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class PdsError(Exception):
    """A PDS call that failed for good; the message says what was called and what came back."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error


class TransientWriteError(PdsError):
    """An applyWrites call whose outcome is unknown (5xx, dropped connection): re-plan from a listing."""


class RateLimited(PdsError):
    """The PDS asked for no call before `until` (epoch seconds), later than the retry budget allows waiting:
    nothing was sent. The caller stops the partition cleanly and reports it deferred until then, instead of
    holding its pool slot asleep for the rest of the window."""

    def __init__(self, message: str, until: float):
        super().__init__(message, 429, "RateLimitExceeded")
        self.until = until


def _jwt_exp(token: str) -> float:
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


def _safe_url(url: str) -> str:
    """The URL without any `user:password@` part, for messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()


@dataclass
class Session:
    did: str
    handle: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"did": self.did, "handle": self.handle, "accessJwt": self.access, "refreshJwt": self.refresh}


class Throttle:
    """A "not before" time for one PDS host, shared by every client in this process (a dict) and across
    processes: a file under ACPIPELINE_HOME/throttle, read before each call; or, with
    `ACPIPELINE_SHARED_STATE=mongodb`, a document in MongoDB read at most once a second (every machine's
    runs). Concurrent updates keep the later time; a lost race only loses one extension of an already-set
    pause (MongoDB's `$max` loses none)."""

    _local: dict[str, float] = {}
    _seen: dict[str, tuple[float, float]] = {}  # host -> (when read, monotonic; the shared time)
    _lock = threading.Lock()

    def __init__(self, url: str, account: str | None = None):
        """`account`: one account's writes only (the PDS counts write points per account), not the host."""
        host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self.host = host if account is None else f"{host}/{account}"
        self._name = hashlib.sha256(self.host.encode()).hexdigest()[:16] + ".json"

    def path(self) -> Path:
        # Looked up per call: ACPIPELINE_HOME is read from the environment, which may change between runs.
        return acpipeline_home() / "throttle" / self._name

    def _where(self) -> tuple[str, Path | None]:
        """The key of this process's copy, and the file that shares it (None: MongoDB shares it)."""
        if shared_state.in_mongodb():
            return f"mongodb:{self.host}", None
        path = self.path()
        return str(path), path

    def not_before(self) -> float:
        key, path = self._where()
        with self._lock:
            local = self._local.get(key, 0.0)
        return max(local, _read_not_before(path) if path else self._shared())

    def _shared(self) -> float:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(self.host)
        if seen is not None and now - seen[0] < SHARED_THROTTLE_READ_S:
            return seen[1]
        value = _read_shared_not_before(self.host)
        with self._lock:
            self._seen[self.host] = (now, value)
        return value

    def delay(self) -> float:
        """Seconds to wait before the next call to this PDS (0 when free to go)."""
        return max(0.0, self.not_before() - time.time())

    def hold(self, until: float) -> None:
        """No call to this PDS (or this account's writes) before `until` (epoch seconds), from any client."""
        key, path = self._where()
        if path is None:
            with self._lock:
                if until <= self._local.get(key, 0.0):
                    return
                self._local[key] = until
            _hold_shared(self.host, until)  # outside the lock: the other threads read `_local` meanwhile
            return
        with self._lock:
            if until <= self._local.get(key, 0.0):
                return
            self._local[key] = until
            if until <= _read_not_before(path):
                return
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"host": self.host, "not_before": until}))
            os.replace(tmp, path)

    def observe(self, response: httpx.Response) -> None:
        """Pace calls when the PDS says its allowance is nearly spent: spread the calls still allowed over
        the rest of the window (a 429 holds until the reset; see `_rate_limit_wait`)."""
        remaining = _header_float(response, "ratelimit-remaining")
        reset = _reset_time(response)
        if remaining is None or reset is None:
            return
        limit = _header_float(response, "ratelimit-limit") or 0.0
        if remaining > max(1.0, limit * PRESSURE_SHARE):
            return
        now = time.time()
        self.hold(now + max(0.0, reset - now) / (remaining + 1))


def _read_not_before(path: Path) -> float:
    try:
        return float(json.loads(path.read_text())["not_before"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _read_shared_not_before(host: str) -> float:
    """The shared time in MongoDB; 0 when there is none or MongoDB does not answer (the throttle is advice:
    a PDS that is really under pressure says so again with its next answer)."""
    try:
        found = shared_state.collection(shared_state.THROTTLE).find_one({"_id": host})
        return float(found["not_before"]) if found else 0.0
    except (PyMongoError, ValueError, KeyError, TypeError):
        return 0.0


def _hold_shared(host: str, until: float) -> None:
    """The later of the stored time and `until`, in one atomic update (`$max`)."""
    throttle = shared_state.collection(shared_state.THROTTLE)
    for _ in range(2):  # two first upserts at once: one of them meets the other's document
        try:
            throttle.update_one({"_id": host}, {"$max": {"not_before": until}}, upsert=True)
            return
        except DuplicateKeyError:
            continue
        except PyMongoError:
            return  # this process still waits; the others learn it from the PDS


class PdsClient:
    """XRPC calls with retries: 429 waits for `ratelimit-reset`/`retry-after` (shared with every client of
    the PDS through `Throttle`); 5xx, timeouts and dropped connections back off exponentially with jitter;
    all within `retry_budget_s` (default `ACPIPELINE_PDS_RETRY_BUDGET_S`, else 120 s).

    A write (`idempotent=False`) is never re-sent once it may have reached the PDS: its 5xx or dropped
    connection raises TransientWriteError and the caller re-plans from a fresh listing."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retry_budget_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/")
        if retry_budget_s is None:
            retry_budget_s = float(os.environ.get(RETRY_BUDGET_ENV) or DEFAULT_RETRY_BUDGET_S)
        self.retry_budget_s = retry_budget_s
        self.sleep = sleep
        self.throttle = Throttle(self.url)
        self._write_throttles: dict[str, Throttle] = {}  # did -> its writes' throttle
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            verify=tls_context(),
        )
        self._sessions: dict[str, Session] = {}
        self._passwords: dict[str, str] = {}
        self._session_lock = threading.Lock()
        # Until the PDS has answered once, a refused connection is a wrong PDS_URL, not a hiccup.
        self._answered = False

    def close(self) -> None:
        self.http.close()

    # -- transport -------------------------------------------------------------------------------

    def call(self, method: str, nsid: str, **options: Any) -> dict[str, Any]:
        """One XRPC call answering JSON; the options are `send`'s."""
        response = self.send(method, nsid, **options)
        return response.json() if response.content else {}

    def send(
        self,
        method: str,
        nsid: str,
        *,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        session: Session | None = None,
        bearer: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One XRPC call with retries, answering the successful HTTP response itself (for bytes: getBlob,
        getRepo); `session` (refreshed once on ExpiredToken/InvalidToken) or a raw `bearer` token."""
        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        tried: list[str] = []
        refreshed = False
        # A repository write is limited per account (write points an hour), so its pressure holds that
        # account's writes only; any other pressure holds every call to the PDS.
        throttle = self._write_throttle(session.did) if session and nsid in REPO_WRITES else self.throttle
        while True:
            self._wait_for_throttle(nsid, deadline, tried, throttle)
            attempt += 1
            headers = {"Content-Type": content_type} if body is not None else {}
            token = session.access if session is not None else bearer
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = self.http.request(
                    method, f"/xrpc/{nsid}", params=params, content=body, headers=headers, auth=basic_auth
                )
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
                if isinstance(exc, httpx.UnsupportedProtocol):
                    raise OperatorError(
                        f"PDS_URL {_safe_url(self.url)!r} is not an http(s) URL: check PDS_URL"
                    ) from None
                if isinstance(exc, httpx.ConnectError) and not self._answered:
                    raise OperatorError(
                        f"the PDS at {_safe_url(self.url)} does not answer ({outcome}): check PDS_URL"
                    ) from None
                if isinstance(exc, httpx.LocalProtocolError):  # our request is malformed: no retry helps
                    raise PdsError(f"{nsid} could not be sent ({outcome})") from None
                tried.append(outcome)
                if not idempotent and not isinstance(exc, _UNSENT):
                    raise TransientWriteError(f"{nsid}: {_summary(tried)}; outcome unknown") from None
                wait = self._backoff(attempt)
            else:
                self._answered = True
                throttle.observe(response)
                if response.status_code < 400:
                    return response
                error, message = _error_of(response)
                if error in TOKEN_ERRORS and session is not None and not refreshed:
                    self._renew(session, stale_access=token or "")
                    refreshed = True
                    continue
                outcome = f"HTTP {response.status_code} {error or ''}".strip()
                tried.append(outcome)
                if response.status_code not in RETRY_STATUS:
                    before = f" (after {_summary(tried[:-1])})" if len(tried) > 1 else ""
                    raise PdsError(
                        f"{nsid} failed: {outcome}: {message}{before}", response.status_code, error
                    )
                pressure = response.status_code == 429 or (
                    response.status_code == 503 and "retry-after" in response.headers
                )
                if pressure:
                    # The PDS refused before doing anything: safe to retry a write too. Every client of
                    # this PDS waits, not only this one.
                    throttle.hold(time.time() + _rate_limit_wait(response))
                    wait = 0.0  # the throttle makes this client (and the others) wait
                elif not idempotent:
                    raise TransientWriteError(
                        f"{nsid}: {_summary(tried)}; outcome unknown", response.status_code, error
                    )
                else:
                    wait = self._backoff(attempt)
            if time.monotonic() + wait > deadline:
                raise PdsError(
                    f"{nsid} failed after {attempt} attempts within {self.retry_budget_s:.0f} s: "
                    + _summary(tried)
                )
            if wait > 0:
                self.sleep(wait)

    def wait_to_write(self, session: Session) -> None:
        """Before a batch's blob uploads: wait while the account's writes are held (within the retry budget),
        or raise RateLimited, so no blob is uploaded for a write the PDS will refuse."""
        deadline = time.monotonic() + self.retry_budget_s
        self._wait_for_throttle(APPLY_WRITES, deadline, [], self._write_throttle(session.did))

    def _write_throttle(self, did: str) -> Throttle:
        with self._session_lock:
            throttle = self._write_throttles.get(did)
            if throttle is None:
                throttle = self._write_throttles[did] = Throttle(self.url, account=did)
            return throttle

    def _wait_for_throttle(self, nsid: str, deadline: float, tried: list[str], throttle: Throttle) -> None:
        delay = max(self.throttle.delay(), throttle.delay() if throttle is not self.throttle else 0.0)
        if delay <= 0:
            return
        if time.monotonic() + delay > deadline:
            until = time.time() + delay
            raise RateLimited(
                f"{nsid}: the PDS at {throttle.host} asked clients to slow down until "
                f"{datetime.fromtimestamp(until, UTC):%H:%M:%S} UTC ({delay:.0f} s), beyond the retry budget "
                f"of {self.retry_budget_s:.0f} s" + (f"; tried: {_summary(tried)}" if tried else ""),
                until,
            )
        # A little jitter, so clients released at the same moment do not all call at once.
        self.sleep(delay + random.random() * min(1.0, 0.1 * delay + 0.05))

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about 0.25 s, 0.5 s, 1 s, ... at most 45 s."""
        return self._backoff(attempt)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(30.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())

    # -- sessions --------------------------------------------------------------------------------

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

    def get_blob(self, did: str, cid: str) -> bytes:
        return self.send("GET", "com.atproto.sync.getBlob", params={"did": did, "cid": cid}).content

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


def _summary(tried: list[str]) -> str:
    """`HTTP 502 x3, ReadTimeout`: what the attempts met, repeats folded."""
    folded: list[tuple[str, int]] = []
    for outcome in tried:
        if folded and folded[-1][0] == outcome:
            folded[-1] = (outcome, folded[-1][1] + 1)
        else:
            folded.append((outcome, 1))
    return ", ".join(f"{o} x{n}" if n > 1 else o for o, n in folded)


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    try:
        data = response.json()
        return data.get("error"), str(data.get("message", ""))[:300]
    except ValueError:
        return None, response.text[:200]


def _header_float(response: httpx.Response, name: str) -> float | None:
    try:
        return float(response.headers[name])
    except (KeyError, ValueError):
        return None


def _reset_time(response: httpx.Response) -> float | None:
    """`ratelimit-reset` as epoch seconds (the PDS sends epoch seconds; small values are read as a delay)."""
    reset = _header_float(response, "ratelimit-reset")
    if reset is None:
        return None
    return reset if reset > 1e9 else time.time() + reset


def _rate_limit_wait(response: httpx.Response) -> float:
    """Seconds until the PDS accepts calls again: `retry-after` (seconds or an HTTP date), else
    `ratelimit-reset`, else a second or two."""
    retry_after = response.headers.get("retry-after", "").strip()
    if retry_after:
        try:
            return max(0.25, float(retry_after)) + random.random() * 0.5
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time()) + 0.5
            except (TypeError, ValueError):
                pass
    reset = _reset_time(response)
    if reset is not None:
        return max(0.5, reset - time.time()) + random.random() * 0.5
    return 1.0 + random.random()


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


class PdsResource(ConfigurableResource):
    """The platform's PDS (`PDS_URL`); `PDS_ADMIN_PASSWORD` is only needed to create accounts.
    `retry_budget_s` None: `ACPIPELINE_PDS_RETRY_BUDGET_S`, else 120 s per call."""

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

    def teardown_after_execution(self, context: Any) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
