"""Typed items: MongoDB documents normalised into what a record needs, with their problems named."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# `when` outside this window is treated as corrupt (TIDs hold 53 bits of microseconds, ~year 2255).
EARLIEST_WHEN = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_WHEN_AHEAD = timedelta(days=366)


class ItemProblem(ValueError):
    """A document that cannot become a record; the message is the reason operators read."""


@dataclass(frozen=True)
class Link:
    """What MongoDB says about the item's record (`atproto.{rkey, uri, cid}`)."""

    rkey: str
    uri: str | None = None
    cid: str | None = None


@dataclass(frozen=True)
class Blob:
    """A derived blob, stored by content under ACPIPELINE_HOME; `cid` is computed locally."""

    cid: str
    mime_type: str
    size: int
    path: str

    def read(self) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.read()


@dataclass(frozen=True)
class Item:
    """One document of a media type as the sync sees it: `data` holds the record's fields, checked; `removed`
    or `problem` say why it has no record."""

    media: str
    ref: str
    owner: str | None
    when: datetime | None
    data: dict[str, Any] = field(default_factory=dict)
    removed: str | None = None  # "nuked" / "deleted": the owner took it down, so its record goes
    link: Link | None = None
    problem: str | None = None  # set when the document cannot become a record

    @property
    def wanted(self) -> bool:
        return self.removed is None


@dataclass(frozen=True)
class Derived:
    """What the blob stage made of one item: named blobs (`thumbnail`, `video`) and facts (`recording`)."""

    blobs: dict[str, Blob] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    # The blobs the blob stage already uploaded (`sync/pre_upload.py`): CID -> (the account's DID, epoch
    # seconds the upload started), for the record stage to skip while the PDS surely keeps them. No bytes.
    uploaded: dict[str, tuple[str, float]] = field(default_factory=dict)


def normalise_when(value: Any, now: datetime | None = None) -> datetime:
    """A document's `when` as an aware UTC datetime with millisecond precision, or ItemProblem."""
    if value is None:
        raise ItemProblem("when is missing")
    if not isinstance(value, datetime):
        raise ItemProblem(f"when is a {type(value).__name__}, not a date")
    now = now or datetime.now(UTC)
    outside = f"is outside {EARLIEST_WHEN.year}..{now.year + 1}"
    when = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # year 1 ahead of UTC, year 9999 behind it: no UTC datetime exists
        raise ItemProblem(f"when {value.isoformat()} {outside}") from None
    if not EARLIEST_WHEN <= when <= now + LATEST_WHEN_AHEAD:
        raise ItemProblem(f"when {when.isoformat()} {outside}")
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def iso_when(when: datetime | None) -> str:
    """ISO 8601 UTC with milliseconds, as the platform writes it: 2025-10-17T23:43:17.100Z. Only items
    without a problem become records, and those always have a `when`."""
    if when is None:
        raise ValueError("an item without a valid `when` has no record")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def required_text(doc: dict[str, Any], name: str) -> str:
    """The field as a non-empty string, never repaired; ItemProblem when it is missing, not a string, or
    damaged (a lone surrogate, or U+FFFD from invalid UTF-8)."""
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ItemProblem(f"{name} is missing" if value in (None, "") else f"{name} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ItemProblem(f"{name} holds invalid Unicode (lone surrogate at {exc.start})") from None
    if "\ufffd" in value:
        # What the MongoDB client makes of invalid UTF-8: never sync text that was damaged on the way.
        raise ItemProblem(f"{name} holds invalid UTF-8 (read as U+FFFD at {value.index(chr(0xFFFD))})")
    return value
