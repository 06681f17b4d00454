"""Blob CIDs computed locally: CIDv1, raw codec (0x55), SHA-256, base32 multibase (as the PDS answers)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32-byte digest


def blob_cid(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "b" + base64.b32encode(_PREFIX + digest).decode("ascii").lower().rstrip("=")


def blob_ref(cid: str, mime_type: str, size: int) -> dict[str, Any]:
    """The JSON form of a blob inside a record value."""
    return {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime_type, "size": size}
