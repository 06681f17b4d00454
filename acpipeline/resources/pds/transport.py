"""XRPC over one HTTP connection pool: the PDS's errors, and `send` with its retries.

429 waits for `ratelimit-reset`/`retry-after` (shared with every client of the PDS through `Throttle`); 5xx,
timeouts and dropped connections back off exponentially with jitter; all within the retry budget
(`ACPIPELINE_PDS_RETRY_BUDGET_S`, else 120 s). A write (`idempotent=False`) is never re-sent once it may have
reached the PDS: its 5xx or dropped connection raises TransientWriteError and the caller re-plans from a
fresh listing.

With `ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY` set, every call carries it in `x-ratelimit-bypass`: the PDS (its
`PDS_RATE_LIMIT_BYPASS_KEY`) then neither limits nor counts it. The key is a secret: it is never put in a
message, and the header is the only place it leaves this process.
"""

from __future__ import annotations

import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from acpipeline.errors import OperatorError
from acpipeline.resources.pds.throttle import Throttle, rate_limit_wait
from acpipeline.resources.retry import Attempts, exponential
from acpipeline.resources.tls import tls_context
from acpipeline.settings import PDS_KEPT_CONNECTIONS

if TYPE_CHECKING:
    from acpipeline.resources.pds.sessions import Session

RETRY_STATUS = {429, 500, 502, 503, 504}
TOKEN_ERRORS = ("ExpiredToken", "InvalidToken")
DEFAULT_RETRY_BUDGET_S = 120.0
RETRY_BUDGET_ENV = "ACPIPELINE_PDS_RETRY_BUDGET_S"
UPLOADS = "uploadBlob"  # the throttle scope of blob uploads (beside each account's writes)
RATELIMIT_BYPASS_ENV = "ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY"
RATELIMIT_BYPASS_HEADER = "x-ratelimit-bypass"  # what the reference PDS compares (dist/rate-limits.js)
# Calls that write to a repository: the PDS limits them per account (points per hour and per day).
REPO_WRITES = frozenset(
    f"com.atproto.repo.{name}" for name in ("applyWrites", "createRecord", "putRecord", "deleteRecord")
)
APPLY_WRITES = "com.atproto.repo.applyWrites"
UPLOAD_BLOB = "com.atproto.repo.uploadBlob"
# Errors raised before the request left this machine: safe to retry even for a write.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# About 0.25 s, 0.5 s, 1 s, ... at most 45 s.
_BACKOFF = exponential(0.25, 30.0, jitter=True)


class PdsError(Exception):
    """A PDS call that failed for good; the message says what was called and what came back."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class TransientWriteError(PdsError):
    """An applyWrites call whose outcome is unknown (5xx, dropped connection): re-plan from a listing."""


class RateLimited(PdsError):
    """The PDS asked for no call before `until` (epoch seconds), later than the retry budget allows waiting:
    nothing was sent. The caller stops the partition cleanly and reports it deferred until then, instead of
    holding its pool slot asleep for the rest of the window."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message, 429, "RateLimitExceeded")
        self.until = until


class BodyTooLarge(PdsError):
    """An answer longer than the caller allows (`send`'s `max_bytes`): not read past that bound."""


def _safe_url(url: str) -> str:
    """The URL without any `user:password@` part, for messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()


class Transport(ABC):
    """XRPC calls with retries, throttled with every other client of the PDS; a call refused for its
    session's access token renews the session once (`_renew`, the sessions' part)."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retry_budget_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ratelimit_bypass_key: str | None = None,
    ) -> None:
        """`retry_budget_s` None: `ACPIPELINE_PDS_RETRY_BUDGET_S`, else 120 s; `ratelimit_bypass_key` None:
        `ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY`, else no key."""
        self.url = url.rstrip("/")
        if retry_budget_s is None:
            retry_budget_s = float(os.environ.get(RETRY_BUDGET_ENV) or DEFAULT_RETRY_BUDGET_S)
        self.retry_budget_s = retry_budget_s
        self._bypass_key = _bypass_key(
            os.environ.get(RATELIMIT_BYPASS_ENV) if ratelimit_bypass_key is None else ratelimit_bypass_key
        )
        self.sleep = sleep
        self.throttle = Throttle(self.url)
        self._write_throttles: dict[str, Throttle] = {}  # did -> its writes' throttle
        self._write_throttles_lock = threading.Lock()
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=PDS_KEPT_CONNECTIONS),
            verify=tls_context(),
        )
        # Until the PDS has answered once, a refused connection is a wrong PDS_URL, not a hiccup.
        self._answered = False

    def close(self) -> None:
        self.http.close()

    @property
    def has_bypass_key(self) -> bool:
        """Whether calls carry a rate-limit bypass key (never the key itself)."""
        return self._bypass_key is not None

    @abstractmethod
    def _renew(self, session: Session, stale_access: str) -> None:
        """A call was refused for the session's access token `stale_access`: renew the session."""

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
        bypass_limits: bool = True,
        max_bytes: int | None = None,
    ) -> httpx.Response:
        """One XRPC call with retries, answering the successful HTTP response itself (for bytes: getBlob,
        getRepo); `session` (refreshed once on ExpiredToken/InvalidToken) or a raw `bearer` token.
        `bypass_limits` False: without the bypass key, as any client meets the PDS (the doctor's probe).
        `max_bytes`: the answer is streamed uncompressed and refused past that many bytes (BodyTooLarge,
        not retried), so an untrusted answer never takes more memory than that."""
        attempts = Attempts(self.backoff, budget_s=self.retry_budget_s, sleep=self.sleep)
        refreshed = False
        throttle = self._throttle_for(nsid, session)
        for _ in attempts:
            self._wait_for_throttle(nsid, attempts, throttle)
            token = session.access if session is not None else bearer
            headers = self._headers(
                content_type if body is not None else None, token, bypass_limits, max_bytes
            )
            try:
                request = self.http.build_request(
                    method, f"/xrpc/{nsid}", params=params, content=body, headers=headers
                )
                response = self.http.send(request, auth=basic_auth, stream=max_bytes is not None)
                if max_bytes is not None:
                    response = _read_within(response, max_bytes, nsid)
            except httpx.TransportError as exc:
                self._not_answered(exc, nsid, attempts, idempotent)
                continue
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
            if response.status_code not in RETRY_STATUS:
                before = f" (after {attempts.summary()})" if attempts.tried else ""
                raise PdsError(f"{nsid} failed: {outcome}: {message}{before}", response.status_code, error)
            if response.status_code == 429 or (
                response.status_code == 503 and "retry-after" in response.headers
            ):
                # The PDS refused before doing anything: safe to retry a write too. Every client of this
                # PDS waits, not only this one: the throttle makes this client (and the others) wait.
                throttle.hold(time.time() + rate_limit_wait(response))
                attempts.failed(outcome, wait=0.0)
                continue
            attempts.failed(outcome)
            if not idempotent:
                raise TransientWriteError(
                    f"{nsid}: {attempts.summary()}; outcome unknown", response.status_code, error
                )
        raise PdsError(
            f"{nsid} failed after {attempts.count} attempts within {self.retry_budget_s:.0f} s: "
            + attempts.summary()
        )

    def _throttle_for(self, nsid: str, session: Session | None) -> Throttle:
        """A repository write is limited per account (write points an hour), so its pressure holds that
        account's writes only; blob uploads have a limit of their own (1,000 a day per IP with the PDS's
        limits on), so its 429 holds uploads only, not the records that need no blob; any other pressure
        holds every call to the PDS."""
        if session and nsid in REPO_WRITES:
            return self._write_throttle(session.did)
        if nsid == UPLOAD_BLOB:
            return self._write_throttle(UPLOADS)
        return self.throttle

    def _headers(
        self, content_type: str | None, token: str | None, bypass_limits: bool, max_bytes: int | None
    ) -> dict[str, str]:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        if bypass_limits and self._bypass_key is not None:
            headers[RATELIMIT_BYPASS_HEADER] = self._bypass_key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if max_bytes is not None:
            headers["Accept-Encoding"] = "identity"  # a compressed answer could inflate past any bound
        return headers

    def _not_answered(
        self, exc: httpx.TransportError, nsid: str, attempts: Attempts, idempotent: bool
    ) -> None:
        """A call the PDS did not answer: an operator's mistake or a request no retry can help raise; a
        write that may have been sent raises (its outcome is unknown); otherwise it counts as a failed
        attempt, to retry."""
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
        attempts.failed(outcome)
        if not idempotent and not isinstance(exc, _UNSENT):
            raise TransientWriteError(f"{nsid}: {attempts.summary()}; outcome unknown") from None

    def wait_to_write(self, session: Session) -> None:
        """Before a batch's blob uploads: wait while the account's writes are held (within the retry budget),
        or raise RateLimited, so no blob is uploaded for a write the PDS will refuse."""
        attempts = Attempts(self.backoff, budget_s=self.retry_budget_s, sleep=self.sleep)
        self._wait_for_throttle(APPLY_WRITES, attempts, self._write_throttle(session.did))

    def _write_throttle(self, did: str) -> Throttle:
        """The throttle of one account's writes (or of the blob uploads, `UPLOADS`)."""
        with self._write_throttles_lock:
            throttle = self._write_throttles.get(did)
            if throttle is None:
                throttle = self._write_throttles[did] = Throttle(self.url, account=did)
            return throttle

    def _wait_for_throttle(self, nsid: str, attempts: Attempts, throttle: Throttle) -> None:
        delay = max(self.throttle.delay(), throttle.delay() if throttle is not self.throttle else 0.0)
        if delay <= 0:
            return
        if time.monotonic() + delay > attempts.deadline:
            until = time.time() + delay
            raise RateLimited(
                f"{nsid}: the PDS at {throttle.host} asked clients to slow down until "
                f"{datetime.fromtimestamp(until, UTC):%H:%M:%S} UTC ({delay:.0f} s), beyond the retry budget "
                f"of {self.retry_budget_s:.0f} s"
                + (f"; tried: {attempts.summary()}" if attempts.tried else ""),
                until,
            )
        # A little jitter, so clients released at the same moment do not all call at once.
        self.sleep(delay + random.random() * min(1.0, 0.1 * delay + 0.05))

    @staticmethod
    def backoff(attempt: int) -> float:
        """Exponential backoff with jitter: about 0.25 s, 0.5 s, 1 s, ... at most 45 s."""
        return _BACKOFF(attempt)


def _bypass_key(value: str | None) -> str | None:
    """The key as a header carries it (surrounding blanks dropped; empty: no key). A key no header can
    carry is a setting to fix, named without its value."""
    key = (value or "").strip()
    if not key:
        return None
    if not all(" " <= char <= "~" for char in key):
        raise OperatorError(
            f"{RATELIMIT_BYPASS_ENV} holds characters an HTTP header cannot carry: set it to the PDS's "
            "PDS_RATE_LIMIT_BYPASS_KEY (printable ASCII)"
        )
    return key


def _read_within(response: httpx.Response, max_bytes: int, nsid: str) -> httpx.Response:
    """The streamed `response` read and closed, as a response holding its body; BodyTooLarge as soon as
    it is known to be longer than `max_bytes` (its Content-Length, or the bytes read so far)."""
    try:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise PdsError(f"{nsid}: answered in Content-Encoding {encoding!r}, not the identity asked for")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge(
                f"{nsid}: the answer is {int(declared):,} bytes, over the {max_bytes:,} allowed",
                response.status_code,
            )
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise BodyTooLarge(
                    f"{nsid}: the answer is over the {max_bytes:,} bytes allowed (stopped reading there)",
                    response.status_code,
                )
    finally:
        response.close()
    return httpx.Response(
        response.status_code, headers=response.headers, content=bytes(body), request=response.request
    )


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    try:
        data = response.json()
        return data.get("error"), str(data.get("message", ""))[:300]
    except ValueError:
        return None, response.text[:200]
