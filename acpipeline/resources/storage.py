r"""Media storage (the platform's DigitalOcean Spaces buckets): URLs from templates, bounded fetches.

Every URL is built from a template and checked values, so a document cannot send a request to another
host: its bucket must be one of the configured ones and its user and slug plain path segments (no `/`, `\`,
`%`, `@`, `:` or `..`; the user is percent-quoted whole). The built URL must keep the template's scheme, host
and path prefix, and redirects are not followed. A URL a document holds (a tape's `mp4Url`) is fetched only
when it lies under one of the configured templates' roots (`storage_url`).

Fetches are bounded in size and in time (a per-read timeout and a deadline for the whole body, so a server
trickling bytes cannot hold a worker forever); 5xx answers and dropped connections are retried a little.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from acpipeline.core.items import ItemProblem
from acpipeline.core.media.base import StoredFile
from acpipeline.errors import OperatorError
from acpipeline.resources.retry import Attempts, exponential
from acpipeline.resources.tls import tls_context
from acpipeline.settings import DEFAULT_BLOBS_URL, DEFAULT_GUEST_IMAGE_URL, DEFAULT_IMAGE_URL, DEFAULT_ZIP_URL

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_USER_RE = re.compile(r"^[A-Za-z0-9|_.@-]{1,128}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9|_.@-]{1,128}$")  # one path segment of a document's URL, unquoted
MAX_DOCUMENT_URL = 1024


class FetchProblem(ItemProblem):
    """Storage did not deliver the bytes (404, 5xx, too slow, too large): the item fails, the rest goes on."""


class StorageUnavailable(FetchProblem):
    """Storage failed rather than answered (5xx after the retries, too slow, unreachable): a fallback chosen
    for it would be undone by the next run, so the item fails instead."""


FILE_PLACEHOLDERS = frozenset({"bucket", "user", "user_dir", "slug"})


# Bare, as Dagster documents: `ConfigurableResource[...]` would derive a pydantic generic class at run time.
class StorageResource(ConfigurableResource):  # type: ignore[type-arg]
    """URL templates take {bucket}, {user}, {user_dir} ("{user}/" or "") and {slug}; `blobs_url` (the
    oven's bucket) takes {key}."""

    image_url: str = DEFAULT_IMAGE_URL
    guest_image_url: str = DEFAULT_GUEST_IMAGE_URL
    zip_url: str = DEFAULT_ZIP_URL
    blobs_url: str = DEFAULT_BLOBS_URL
    buckets: list[str] = ["art-aesthetic-computer", "user-aesthetic-computer"]
    timeout_s: float = 30.0
    """Per read: storage silent this long fails the item."""
    deadline_s: float = 600.0
    """Whole download: a body still arriving after this fails the item."""
    retries: int = 2
    """Extra attempts after a 5xx or a dropped connection (not after a timeout: that already waited)."""
    retry_wait_s: float = 0.5
    max_image_bytes: int = 64 * 1024 * 1024
    max_zip_bytes: int = 1024 * 1024 * 1024
    _http: httpx.Client | None = PrivateAttr(default=None)

    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                follow_redirects=False,
                verify=tls_context(),
            )
        return self._http

    def teardown_after_execution(self, context: InitResourceContext | None) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- URLs ------------------------------------------------------------------------------------

    def _checked(self, field: str, takes: frozenset[str]) -> str:
        """The template of `field`, once its placeholders are known ones; an unknown one is the operator's
        setting to fix, named (it would fail every item of the type alike)."""
        template: str = getattr(self, field)
        unknown = sorted(_placeholders(template) - takes)
        if unknown:
            setting = f"ACPIPELINE_{field.upper()}"
            raise OperatorError(
                f"{setting} has the placeholder {{{unknown[0]}}}, which storage URLs do not fill: it takes "
                + ", ".join(f"{{{n}}}" for n in sorted(takes))
                + f"; fix {setting}"
            )
        return template

    def _url(self, template: str, bucket: str, user: str | None, slug: str) -> str:
        if not isinstance(bucket, str) or bucket not in self.buckets or not _BUCKET_RE.match(bucket):
            raise ItemProblem(f"bucket {str(bucket)[:40]!r} is not a configured storage bucket")
        if not isinstance(slug, str) or not _SLUG_RE.match(slug) or ".." in slug:
            raise ItemProblem(f"slug {str(slug)[:40]!r} is not a plain storage name")
        if user is not None and (
            not isinstance(user, str) or not _USER_RE.match(user) or ".." in user or user == "."
        ):
            raise ItemProblem(f"user {str(user)[:40]!r} is not a plain storage name")
        quoted_user = quote(user or "", safe="")
        url = template.format(
            bucket=bucket,
            user=quoted_user,
            user_dir=f"{quoted_user}/" if user else "",
            slug=quote(slug, safe=""),
        )
        expected = urlsplit(template.format(bucket=bucket, user="u", user_dir="", slug="s"))
        prefix = template.split("{", 1)[0]
        got = urlsplit(url)
        if (got.scheme, got.netloc) != (expected.scheme, expected.netloc) or not url.startswith(prefix):
            raise ItemProblem(f"storage URL for {slug[:40]!r} leaves the storage host")
        return url

    def url_of(self, file: StoredFile) -> str:
        """The URL of a source file of an item (its media rules say which); raises ItemProblem when a part
        is not a plain storage name or the URL would leave the storage host."""
        field = {"image": "image_url", "guest_image": "guest_image_url", "zip": "zip_url"}[file.template]
        return self._url(self._checked(field, FILE_PLACEHOLDERS), file.bucket, file.owner, file.name)

    def blobs_bucket_url(self, key: str) -> str:
        """An object of the oven's bucket (`tapes/{code}-thumb.jpg`); each path segment must be plain."""
        if not all(_SLUG_RE.match(part) and ".." not in part for part in key.split("/")):
            raise ItemProblem(f"{key[:60]!r} is not a plain storage name")
        return self._checked("blobs_url", frozenset({"key"})).format(key=key)

    def _roots(self) -> list[str]:
        """Each template's fixed start (for each configured bucket): where a document's URL may point."""
        roots = [self.blobs_url.split("{", 1)[0]]
        for template in (self.image_url, self.guest_image_url, self.zip_url):
            for bucket in self.buckets:
                roots.append(template.replace("{bucket}", bucket).split("{", 1)[0])
        return [root for root in roots if urlsplit(root).path.endswith("/")]

    def storage_url(self, url: str, field: str) -> str:
        """A URL from a document (`field` names it in reasons), when it lies under a configured storage root
        and its path is plain segments; raises ItemProblem."""
        parts = urlsplit(url)
        if len(url) > MAX_DOCUMENT_URL or parts.query or parts.fragment or parts.username or parts.password:
            raise ItemProblem(f"{field} {url[:80]!r} is not a plain storage URL")
        root = next((r for r in self._roots() if url.startswith(r)), None)
        if root is None:
            raise ItemProblem(f"{field} host {parts.netloc[:80]!r} is not a configured storage host")
        segments = [unquote(segment) for segment in url[len(root) :].split("/")]
        if not all(_SEGMENT_RE.match(segment) and segment not in (".", "..") for segment in segments):
            raise ItemProblem(f"{field} {url[:80]!r} is not a plain storage URL")
        return root + "/".join(quote(segment, safe="") for segment in segments)

    # -- fetching --------------------------------------------------------------------------------

    def fetch(self, url: str, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or self.max_image_bytes
        chunks: list[bytes] = []
        self._stream(url, limit, chunks.append)
        return b"".join(chunks)

    def fetch_to_file(self, url: str, path: Path, max_bytes: int | None = None) -> None:
        with open(path, "wb") as fh:
            self._stream(url, max_bytes or self.max_zip_bytes, fh.write)

    def _attempts(self) -> Attempts:
        return Attempts(exponential(self.retry_wait_s), limit=self.retries + 1)

    def _stream(self, url: str, limit: int, sink: Callable[[bytes], Any]) -> None:
        attempts = self._attempts()
        for _ in attempts:
            try:
                self._stream_once(url, limit, sink)
                return
            except _Retryable as exc:
                attempts.failed(str(exc))
        raise StorageUnavailable(_failure(attempts))

    def _stream_once(self, url: str, limit: int, sink: Callable[[bytes], Any]) -> None:
        """One GET into `sink`. Retryable only while nothing reached the sink: a retry never appends a
        second copy of the first bytes."""
        started = time.monotonic()
        received = 0
        try:
            with self.http().stream("GET", url) as response:
                if response.status_code >= 500:
                    raise _Retryable(f"storage answered {response.status_code} for {shown_url(url)}")
                if response.status_code != 200:
                    raise FetchProblem(f"storage answered {response.status_code} for {shown_url(url)}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise FetchProblem(f"{shown_url(url)} is larger than {limit} bytes ({declared})")
                for chunk in response.iter_bytes():  # as it arrives, so the deadline is checked
                    received += len(chunk)
                    if received > limit:
                        raise FetchProblem(f"{shown_url(url)} is larger than {limit} bytes")
                    if time.monotonic() - started > self.deadline_s:
                        raise StorageUnavailable(
                            f"storage too slow for {shown_url(url)}: "
                            f"{received} bytes in {self.deadline_s:g} s"
                        )
                    sink(chunk)
        except httpx.TimeoutException:
            raise StorageUnavailable(
                f"storage too slow for {shown_url(url)} (nothing for {self.timeout_s:g} s)"
            ) from None
        except httpx.TransportError as exc:
            reason = f"storage unreachable for {shown_url(url)} ({type(exc).__name__})"
            if received:
                raise StorageUnavailable(f"{reason} after {received} bytes") from None
            raise _Retryable(reason) from None

    def exists(self, url: str) -> bool:
        """HEAD answering 200 means the object exists; 403/404 mean it does not; other answers fail."""
        attempts = self._attempts()
        for _ in attempts:
            try:
                response = self.http().head(url)
            except httpx.TimeoutException:
                raise FetchProblem(
                    f"storage too slow for HEAD {shown_url(url)} (nothing for {self.timeout_s:g} s)"
                ) from None
            except httpx.TransportError as exc:
                attempts.failed(f"storage unreachable for {shown_url(url)} ({type(exc).__name__})")
            else:
                if response.status_code == 200:
                    return True
                if response.status_code in (403, 404):
                    return False
                failure = f"storage answered {response.status_code} to HEAD {shown_url(url)}"
                if response.status_code < 500:
                    raise FetchProblem(failure)
                attempts.failed(failure)
        raise FetchProblem(_failure(attempts))


class _Retryable(Exception):
    """A storage failure worth another attempt: a 5xx, or a connection refused or dropped before any byte."""


@lru_cache(maxsize=32)
def _placeholders(template: str) -> frozenset[str]:
    """The names a URL template asks for (read once per template: every item's URL is built from one)."""
    try:
        return frozenset(name for _, name, _, _ in Formatter().parse(template) if name is not None)
    except ValueError:
        return frozenset({"(unbalanced braces)"})


def _failure(attempts: Attempts) -> str:
    """The last failure, and how many attempts failed."""
    return attempts.tried[-1] + (f" ({len(attempts.tried)} attempts)" if len(attempts.tried) > 1 else "")


def shown_url(url: str) -> str:
    """A URL as a failure reason or a check shows it: host, port and path only, cut short. A storage URL
    may carry a credential (user:password@, a signed query), and reasons reach the event log."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{host}{parts.path}"[:160]
