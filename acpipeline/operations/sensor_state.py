"""The new-content sensor's state between ticks: the digest of every non-empty partition as of the last tick,
the partitions pending a run, the tape ZIPs waited for and the deferred partitions. It is kept in Dagster's
key-value store and named by the sensor's cursor (see `save_state`): Dagster stores the cursor with every
tick, so the cursor stays short however large the state grows."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance

from acpipeline.core.fingerprint import EMPTY
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.dagster_compat import kv_get, kv_set

CURSOR_VERSION = "kv1:"
STATE_KEY = "acpipeline/new_content_sensor/state"
STATE_CHUNK = 60_000  # characters per stored value (MySQL TEXT holds 64 KB)


@dataclass
class SensorState:
    """What the sensor remembers between ticks; plain JSON values only, so `encode_state` stores it as it
    is."""

    digests: dict[str, list[str]] = field(default_factory=dict)  # handle -> digest per MEDIA_NAMES slot
    zips: dict[str, list[Any]] = field(default_factory=dict)  # tape ref -> [MISSING|PRESENT, checked_at]
    # partition key -> [its run (REQUESTED + tag value or WAITING + run id), since, runs in a row that failed]
    pending: dict[str, list[Any]] = field(default_factory=dict)
    # partition key -> when the PDS's rate limit lets it run again (a run deferred it); and when the runs
    # that defer were last looked for
    deferred: dict[str, float] = field(default_factory=dict)
    deferred_checked: float = 0.0

    def digest(self, handle: str, media: str) -> str:
        slots = self.digests.get(handle)
        return slots[MEDIA_NAMES.index(media)] if slots else EMPTY


def encode_state(state: SensorState) -> str:
    """The state as compact text: zlib-compressed JSON in base64 (deterministic for the same state)."""
    payload = json.dumps(
        {
            "media": MEDIA_NAMES,
            "digests": state.digests,
            "zips": state.zips,
            "pending": state.pending,
            "deferred": state.deferred,
            "deferred_checked": state.deferred_checked,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    return base64.b64encode(zlib.compress(payload.encode(), 9)).decode()


def decode_state(blob: str) -> SensorState | None:
    """The state, or None for text this version cannot read."""
    try:
        data = json.loads(zlib.decompress(base64.b64decode(blob, validate=True)))
    except (ValueError, zlib.error):
        return None
    if not isinstance(data, dict) or data.get("media") != MEDIA_NAMES:
        return None
    return SensorState(
        digests=data.get("digests", {}),
        zips=data.get("zips", {}),
        pending=data.get("pending", {}),
        deferred=data.get("deferred", {}),
        deferred_checked=data.get("deferred_checked", 0.0),
    )


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor or not cursor.startswith(CURSOR_VERSION):
        return None
    generation, _, checksum = cursor[len(CURSOR_VERSION) :].partition(":")
    return (int(generation), checksum) if generation.isdigit() and checksum else None


def save_state(instance: DagsterInstance, state: SensorState, cursor: str | None) -> str:
    """Store the state beside the cursor and return the new cursor: `kv1:<generation>:<checksum>`.

    The state (up to ~230 KB for 4,201 accounts with content in every media type) lives in Dagster's own
    key-value store, in one of two slots that alternate by generation, so the cursor Dagster writes with every
    tick stays ~20 characters and the previous generation survives a tick that fails after saving. An
    unchanged state writes nothing."""
    blob = encode_state(state)
    checksum = hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()
    previous = _parse_cursor(cursor)
    if cursor and previous and previous[1] == checksum:
        return cursor
    generation = previous[0] + 1 if previous else 1
    slot = f"{STATE_KEY}/{generation % 2}"
    chunks = [blob[i : i + STATE_CHUNK] for i in range(0, len(blob), STATE_CHUNK)]
    pairs = {f"{slot}/{n}": chunk for n, chunk in enumerate(chunks)}
    pairs[slot] = f"{generation}:{len(chunks)}:{checksum}"
    kv_set(instance, pairs)
    return f"{CURSOR_VERSION}{generation}:{checksum}"


def load_state(instance: DagsterInstance, cursor: str | None) -> SensorState | None:
    """The state the cursor names; None (a first tick) for no cursor, or one whose state is not stored
    (an operator reset or edited the cursor, or the instance's storage was replaced)."""
    parsed = _parse_cursor(cursor)
    if parsed is None:
        return None
    generation, checksum = parsed
    slot = f"{STATE_KEY}/{generation % 2}"
    header = kv_get(instance, {slot}).get(slot, "")
    stored_generation, _, rest = header.partition(":")
    count, _, stored_checksum = rest.partition(":")
    if stored_generation != str(generation) or stored_checksum != checksum or not count.isdigit():
        return None
    keys = [f"{slot}/{n}" for n in range(int(count))]
    values = kv_get(instance, set(keys))
    blob = "".join(values.get(key, "") for key in keys)
    if hashlib.blake2b(blob.encode(), digest_size=6).hexdigest() != checksum:
        return None
    return decode_state(blob)
