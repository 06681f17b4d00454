"""Split planned writes into applyWrites calls the PDS accepts: at most 200 writes and ~1 MB per body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from acpipeline.core.plan import Write

MAX_WRITES = 200
# The PDS refuses request bodies around 1 MB (19 kidlisp of 50,000 characters pass, 20 get 413); keep a
# margin for the envelope.
MAX_BODY_BYTES = 900_000

_OPS = {
    "create": "com.atproto.repo.applyWrites#create",
    "update": "com.atproto.repo.applyWrites#update",
    "delete": "com.atproto.repo.applyWrites#delete",
}


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent, so batch sizes are measured, not guessed."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_op(collection: str, write: Write) -> dict[str, Any]:
    """One planned write as an applyWrites operation: `$type`, collection, rkey, and `value` unless a
    delete."""
    op: dict[str, Any] = {"$type": _OPS[write.action], "collection": collection, "rkey": write.rkey}
    if write.action != "delete":
        op["value"] = write.value
    return op


def batch_writes(
    collection: str,
    writes: list[Write],
    max_writes: int = MAX_WRITES,
    max_bytes: int = MAX_BODY_BYTES,
) -> Iterator[list[Write]]:
    """Consecutive groups of `writes`, each within both limits. A single write over the byte limit
    still goes alone (the lexicon limits keep records far below it)."""
    batch: list[Write] = []
    size = 0
    for write in writes:
        op_size = len(encode_body(write_op(collection, write))) + 1
        if batch and (len(batch) >= max_writes or size + op_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(write)
        size += op_size
    if batch:
        yield batch
