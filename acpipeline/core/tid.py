"""Record keys: ATProto TIDs (atproto.com/specs/tid), built deterministically from an item."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")


def encode_tid(micros: int, clock_id: int) -> str:
    """A 13-character TID: top bit 0, 53 bits of microseconds since the epoch, 10 bits of clock id."""
    if not 0 <= micros < 2**53 or not 0 <= clock_id < 1024:
        raise ValueError(f"TID out of range: micros={micros} clock_id={clock_id}")
    value = (micros << 10) | clock_id
    chars = []
    for _ in range(13):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_tid(tid: str) -> tuple[int, int]:
    """(microseconds, clock id) of a TID."""
    if not TID_RE.match(tid):
        raise ValueError(f"not a TID: {tid!r}")
    value = 0
    for char in tid:
        value = (value << 5) | ALPHABET.index(char)
    return value >> 10, value & 1023


def is_tid(key: str) -> bool:
    """Whether `key` has a TID's syntax, as the rkeys of `key: tid` lexicons must."""
    return bool(TID_RE.match(key))


def clock_id_for(ref: str) -> int:
    """The item's clock id, hashed from its `_id`: the same item always gets the same one, so its key is
    deterministic."""
    # surrogatepass: an `_id` that is no valid Unicode (a lone surrogate) still has a key; valid ones hash
    # exactly as UTF-8.
    return int.from_bytes(hashlib.sha256(ref.encode("utf-8", "surrogatepass")).digest()[:2], "big") & 1023


def micros_of(when: datetime) -> int:
    """Microseconds since the epoch in integer arithmetic (no float rounding); a naive datetime counts as
    UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def item_tid(when: datetime, ref: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The item's deterministic TID: its `when` in microseconds and a clock id hashed from its `_id`.

    A collision with a key in `taken` (another item of the same account and collection) moves to the
    next microsecond, so the result is still a function of the item and its neighbours only.
    """
    micros, clock = micros_of(when), clock_id_for(ref)
    tid = encode_tid(micros, clock)
    while tid in taken:
        micros += 1
        tid = encode_tid(micros, clock)
    return tid
