"""A whole repository read from one `com.atproto.sync.getRepo` CAR, which is untrusted input.

The CAR is bounded (bytes, blocks, MST depth) and checked before anything of it is used: every block must
hash to its CID (sha-256; dag-cbor or raw), the header must name one root, that root must be a version 3
commit of the expected DID, and the MST under it must be whole and well formed (every node and record
present, no node reached twice, keys `collection/rkey` in strictly increasing order). Every fault is a
`RepoError` naming it.

The commit's signature is not verified: the CAR comes from the account's own PDS over its TLS, the host
that signs it, so a signature check would only repeat what the connection already vouches for.

libipld decodes the DAG-CBOR, but its `decode_car` is not used: it does not check blocks against their CIDs,
gives no block's raw bytes to check them with, ignores each section's length, takes a CAR cut at a section
boundary (even one with no block at all) as complete, and refuses raw (0x55) blocks. So the sections are
framed here (varint lengths only) and each block is hash-checked, then decoded by libipld.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import libipld

from acpipeline.resources.pds.transport import PdsError

MiB = 1 << 20
CIDV1 = 1
DAG_CBOR = 0x71
RAW = 0x55
SHA2_256 = 0x12
SHA2_256_SIZE = 32
COMMIT_VERSION = 3
_LINK_TAG = b"\xd8\x2a"  # CBOR tag 42, how DAG-CBOR starts a CID link
# atproto's syntax for the two halves of an MST key (atproto.com/specs/nsid, /specs/record-key).
_NSID = re.compile(
    r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_RKEY = re.compile(r"[a-zA-Z0-9_~.:-]{1,512}")


class RepoError(PdsError):
    """A repository CAR that is refused: the message names the account and what was wrong."""


@dataclass(frozen=True)
class RepoLimits:
    """Bounds on what one account's CAR may make us hold and walk.

    The platform's biggest account holds a few thousand records: 2,867 small ones made a CAR of 876 KB and
    3,644 blocks (a block per record, an MST node per three or four records, the commit). 200,000
    blocks leave some 50 times that. Bytes are bounded apart from blocks because a record may be large (a
    kidlisp of 50,000 characters): 256 MB holds 3,000 such records, and is what a run may hold in memory
    for one account (about twice over while parsing). An honest MST is about log4(records) deep (about 9
    for 200,000 records), so no real tree reaches 64 levels."""

    max_bytes: int = 256 * MiB
    max_blocks: int = 200_000
    max_depth: int = 64


DEFAULT_REPO_LIMITS = RepoLimits()


@dataclass(frozen=True)
class RepoRecord:
    """One record: `value` in the JSON form `listRecords` answers (links `{"$link"}`, bytes `{"$bytes"}`)."""

    rkey: str
    cid: str
    value: dict[str, Any]


@dataclass(frozen=True)
class RepoSnapshot:
    """An account's records at one commit, by collection, each collection in rkey order."""

    did: str
    commit_cid: str
    rev: str
    records: dict[str, list[RepoRecord]] = field(default_factory=dict)

    def collection(self, nsid: str) -> list[RepoRecord]:
        return self.records.get(nsid, [])


@dataclass(frozen=True)
class _Block:
    codec: int
    data: bytes


def parse_repo(car: bytes, did: str, limits: RepoLimits = DEFAULT_REPO_LIMITS) -> RepoSnapshot:
    """The records of `did`'s repository from its CAR (`getRepo`), or RepoError naming the fault."""
    if len(car) > limits.max_bytes:
        raise RepoError(
            f"repository of {did}: the CAR is {len(car):,} bytes, over the {limits.max_bytes:,} allowed"
        )
    root, blocks = _read_car(car, did, limits)
    commit = _decode(blocks, root, did, "the commit")
    if not (
        isinstance(commit, dict)
        and commit.get("version") == COMMIT_VERSION
        and isinstance(commit.get("did"), str)
        and isinstance(commit.get("rev"), str)
        and isinstance(commit.get("data"), bytes)
    ):
        raise RepoError(
            f"repository of {did}: the root {_cid_text(root)} is not a version {COMMIT_VERSION} commit "
            "(with did, data and rev)"
        )
    if commit["did"] != did:
        raise RepoError(f"repository of {did}: the commit is for another account, {commit['did']!r}")
    records: dict[str, list[RepoRecord]] = {}
    for key, record_cid in _walk_mst(blocks, commit["data"], did, limits):
        collection, rkey = _split_key(key, did)
        value = _record_value(blocks, record_cid, key, did)
        records.setdefault(collection, []).append(RepoRecord(rkey, _cid_text(record_cid), value))
    return RepoSnapshot(did, _cid_text(root), commit["rev"], records)


def _read_car(car: bytes, did: str, limits: RepoLimits) -> tuple[bytes, dict[bytes, _Block]]:
    """The header's one root and every block by CID bytes, each block checked against its CID."""
    where = f"repository of {did}"
    header_length, position = _varint(car, 0, where)
    header_end = position + header_length
    if header_end > len(car):
        raise RepoError(f"{where}: the CAR is truncated in its header")
    try:
        header = libipld.decode_dag_cbor(car[position:header_end])
    except (ValueError, RecursionError) as exc:
        raise RepoError(f"{where}: the CAR header is not DAG-CBOR ({exc})") from None
    roots = header.get("roots") if isinstance(header, dict) else None
    if not isinstance(header, dict) or header.get("version") != 1 or not isinstance(roots, list):
        raise RepoError(f"{where}: the CAR header is not a version 1 header with roots")
    if len(roots) != 1 or not isinstance(roots[0], bytes):
        raise RepoError(f"{where}: the CAR header names {len(roots)} roots, not exactly one")
    blocks: dict[bytes, _Block] = {}
    count = 0
    position = header_end
    while position < len(car):
        count += 1
        if count > limits.max_blocks:
            raise RepoError(f"{where}: the CAR holds more than the {limits.max_blocks:,} blocks allowed")
        section_length, position = _varint(car, position, where)
        section_end = position + section_length
        if section_end > len(car):
            raise RepoError(f"{where}: the CAR is truncated in block {count}")
        cid, block = _checked_block(car[position:section_end], count, where)
        blocks[cid] = block
        position = section_end
    return roots[0], blocks


def _checked_block(section: bytes, number: int, where: str) -> tuple[bytes, _Block]:
    """One section's CID bytes and block, refused unless a CIDv1 of a supported codec whose sha-256 the
    block's bytes match."""
    position = 0
    fields = []
    for _ in range(4):  # version, codec, multihash code, digest size
        value, position = _varint(section, position, f"{where}: block {number}'s CID")
        fields.append(value)
    version, codec, hash_code, digest_size = fields
    cid_end = position + digest_size
    if version != CIDV1 or cid_end > len(section):
        raise RepoError(f"{where}: block {number} has a malformed CID")
    cid = section[:cid_end]
    if codec not in (DAG_CBOR, RAW):
        raise RepoError(f"{where}: block {_cid_text(cid)} has codec {codec:#x}, not dag-cbor or raw")
    if hash_code != SHA2_256 or digest_size != SHA2_256_SIZE:
        raise RepoError(f"{where}: block {_cid_text(cid)} is not addressed by sha-256")
    data = section[cid_end:]
    if hashlib.sha256(data).digest() != section[position:cid_end]:
        raise RepoError(f"{where}: block {_cid_text(cid)} does not hash to its CID")
    return cid, _Block(codec, data)


def _varint(data: bytes, position: int, where: str) -> tuple[int, int]:
    """An unsigned LEB128 varint at `position`, and the position after it."""
    value = shift = 0
    while True:
        if position >= len(data):
            raise RepoError(f"{where}: truncated (a varint runs past the end)")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 56:
            raise RepoError(f"{where}: malformed (a varint longer than 9 bytes)")


def _decode(blocks: dict[bytes, _Block], cid: bytes, did: str, what: str) -> Any:
    """The DAG-CBOR block `cid`, which must be in the CAR."""
    block = blocks.get(cid)
    if block is None:
        raise RepoError(f"repository of {did}: {what} {_cid_text(cid)} is missing from the CAR")
    if block.codec != DAG_CBOR:
        raise RepoError(f"repository of {did}: {what} {_cid_text(cid)} is a raw block, not DAG-CBOR")
    try:
        return libipld.decode_dag_cbor(block.data)
    except (ValueError, RecursionError) as exc:
        raise RepoError(
            f"repository of {did}: {what} {_cid_text(cid)} is not valid DAG-CBOR ({exc})"
        ) from None


class _Subtree(NamedTuple):
    cid: bytes
    depth: int  # the root node is at 1


class _Entry(NamedTuple):
    key: str
    record_cid: bytes


def _walk_mst(blocks: dict[bytes, _Block], root: bytes, did: str, limits: RepoLimits) -> Iterator[_Entry]:
    """Every key and record CID of the MST under `root`, in key order, which is checked to be strictly
    increasing. Nodes are `{l, e: [{p, k, v, t}]}`: `l` the subtree before the first entry; each entry's
    key the first `p` bytes of the previous entry's key then `k`, its record `v`, and `t` the subtree after
    it. Iterative: a stack of what is still to walk, the next on top."""
    where = f"repository of {did}: MST"
    seen: set[bytes] = set()
    pending: list[_Subtree | _Entry] = [_Subtree(root, 1)]
    previous_key = ""
    while pending:
        item = pending.pop()
        if isinstance(item, _Entry):
            if item.key <= previous_key:
                raise RepoError(f"{where}: key {item.key!r} comes after {previous_key!r}, out of order")
            previous_key = item.key
            yield item
            continue
        if item.cid in seen:
            raise RepoError(
                f"{where}: node {_cid_text(item.cid)} is reached twice (a cycle or a shared subtree)"
            )
        seen.add(item.cid)
        if item.depth > limits.max_depth:
            raise RepoError(f"{where}: deeper than the {limits.max_depth} levels allowed")
        pending.extend(reversed(_node_contents(blocks, item, did)))


def _node_contents(blocks: dict[bytes, _Block], subtree: _Subtree, did: str) -> list[_Subtree | _Entry]:
    """One MST node's subtrees and entries, in key order, its keys checked as keys."""
    node = _decode(blocks, subtree.cid, did, "MST node")
    entries = node.get("e") if isinstance(node, dict) else None
    if not isinstance(entries, list) or not _optional_link(node.get("l")):
        raise RepoError(f"repository of {did}: MST node {_cid_text(subtree.cid)} is not an MST node")
    contents: list[_Subtree | _Entry] = []
    if node["l"] is not None:
        contents.append(_Subtree(node["l"], subtree.depth + 1))
    key = b""
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("p"), int)
            and isinstance(entry.get("k"), bytes)
            and isinstance(entry.get("v"), bytes)
            and _optional_link(entry.get("t"))
            and 0 <= entry["p"] <= len(key)
        ):
            raise RepoError(f"repository of {did}: MST node {_cid_text(subtree.cid)} has a malformed entry")
        key = key[: entry["p"]] + entry["k"]
        if not key.isascii():
            raise RepoError(f"repository of {did}: MST key {key[:200]!r} is not collection/rkey")
        contents.append(_Entry(key.decode("ascii"), entry["v"]))
        if entry["t"] is not None:
            contents.append(_Subtree(entry["t"], subtree.depth + 1))
    return contents


def _optional_link(value: Any) -> bool:
    return value is None or isinstance(value, bytes)


def _split_key(key: str, did: str) -> tuple[str, str]:
    collection, slash, rkey = key.partition("/")
    if not (slash and _NSID.fullmatch(collection) and _RKEY.fullmatch(rkey) and rkey not in (".", "..")):
        raise RepoError(f"repository of {did}: MST key {key[:200]!r} is not collection/rkey")
    return collection, rkey


def _record_value(blocks: dict[bytes, _Block], cid: bytes, key: str, did: str) -> dict[str, Any]:
    """The record as `listRecords` gives it. libipld decodes a link and a byte string alike to bytes, and
    encodes bytes that parse as a CID as a link; so in a record that re-encodes to its own block, the links
    are exactly the bytes libipld's encoder makes links of, and the JSON form can tell them apart."""
    where = f"repository of {did}: record {key}"
    value = _decode(blocks, cid, did, f"record {key}")
    if not isinstance(value, dict):
        raise RepoError(f"{where} is not a map")
    try:
        if libipld.encode_dag_cbor(value) != blocks[cid].data:
            raise RepoError(
                f"{where} does not re-encode to its own bytes (not canonical DAG-CBOR, or a byte string "
                "shaped like a CID): its links cannot be told from its bytes"
            )
        return {name: _json_form(item, where) for name, item in value.items()}
    except RecursionError:
        raise RepoError(f"{where} is nested too deeply") from None


def _json_form(value: Any, where: str) -> Any:
    """A decoded DAG-CBOR value in atproto's JSON form: links `{"$link": "b..."}`, bytes `{"$bytes": base64
    without padding}`."""
    if isinstance(value, dict):
        return {name: _json_form(item, where) for name, item in value.items()}
    if isinstance(value, list):
        return [_json_form(item, where) for item in value]
    if isinstance(value, bytes):
        if not libipld.encode_dag_cbor(value).startswith(_LINK_TAG):
            return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
        text = _cid_text(value)
        if text.startswith("<"):
            raise RepoError(f"{where} holds a malformed link {text}")
        return {"$link": text}
    return value


def _cid_text(cid: bytes) -> str:
    """A CID's string form (`b...` for CIDv1), or `<malformed CID hex>` for messages."""
    try:
        text = libipld.encode_cid(cid)
        if libipld.decode_multibase(text)[1] == cid:  # libipld ignores bytes after a CID
            return text
    except ValueError:
        pass
    return f"<malformed CID {cid[:40].hex()}>"
