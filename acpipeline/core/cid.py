"""CIDs computed locally, as the PDS answers them (CIDv1, SHA-256, base32 multibase): a blob's (raw codec,
0x55) and a record's (DAG-CBOR codec, 0x71)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import libipld

_RAW = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32-byte digest
_DAG_CBOR = bytes([0x01, 0x71, 0x12, 0x20])  # CIDv1, dag-cbor, sha2-256, 32-byte digest


def _cid_text(prefix: bytes, data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "b" + base64.b32encode(prefix + digest).decode("ascii").lower().rstrip("=")


def blob_cid(data: bytes) -> str:
    """The CID the PDS gives these bytes as a blob (raw codec), known before any upload."""
    return _cid_text(_RAW, data)


class NotComputable(ValueError):
    """A record value whose CID this module does not compute: it holds bytes (`{"$bytes"}`), which the
    DAG-CBOR encoder would take for a link when they parse as a CID, or a malformed link."""


def record_cid(value: dict[str, Any]) -> str:
    """The CID of a record the PDS stores from `value`, its JSON form (links `{"$link": "b..."}`)."""
    return _cid_text(_DAG_CBOR, libipld.encode_dag_cbor(_ipld(value)))


def _ipld(value: Any) -> Any:
    if isinstance(value, dict):
        if "$bytes" in value:
            raise NotComputable("a record value with bytes")
        if "$link" in value:
            link = value["$link"]
            if len(value) != 1 or not isinstance(link, str):
                raise NotComputable("a malformed link")
            try:
                return libipld.decode_multibase(link)[1]
            except ValueError:
                raise NotComputable("a malformed link") from None
        return {name: _ipld(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_ipld(item) for item in value]
    return value


def blob_ref(cid: str, mime_type: str, size: int) -> dict[str, Any]:
    """The JSON form of a blob inside a record value."""
    return {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime_type, "size": size}
