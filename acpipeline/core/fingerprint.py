"""Digests of items: what a record is built from, so a change in MongoDB can be told without a sync.

The link back (`atproto.*`, `at.*`) is left out: a sync or a wipe writing it is not a change of the source.
"""

from __future__ import annotations

import hashlib
import json
from base64 import urlsafe_b64encode
from collections.abc import Iterable

from acpipeline.core.items import Item

EMPTY = ""  # the digest of a partition without documents


def item_digest(item: Item) -> bytes:
    """8 bytes naming what the record is built from (the link back is left out)."""
    when = item.when.isoformat() if item.when else None
    payload = [item.ref, item.owner, when, item.removed, item.data, item.problem]
    text = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def combine(digests: Iterable[bytes]) -> str:
    """The partition's digest: order-independent, 11 characters; EMPTY without documents."""
    ordered = sorted(digests)
    if not ordered:
        return EMPTY
    return urlsafe_b64encode(hashlib.blake2b(b"".join(ordered), digest_size=8).digest()).decode()[:11]
