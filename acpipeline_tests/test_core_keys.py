"""TIDs and blob CIDs: the pure helpers behind record keys and blob identity."""

import hashlib
from datetime import UTC, datetime

from atproto_client.models.string_formats import TID_RE
from atproto_core.cid import CID

from acpipeline.core.cid import blob_cid
from acpipeline.core.tid import decode_tid, encode_tid, is_tid, item_tid, micros_of


def test_tid_round_trip_and_shape():
    tid = encode_tid(1_700_000_000_123_456, 777)
    assert len(tid) == 13 and is_tid(tid)
    assert decode_tid(tid) == (1_700_000_000_123_456, 777)


def test_tids_sort_like_time():
    a = encode_tid(1_600_000_000_000_000, 1023)
    b = encode_tid(1_600_000_000_000_001, 0)
    assert a < b


def test_item_tid_is_deterministic_and_avoids_collisions():
    when = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    first = item_tid(when, "65a1b2c3d4e5f60718293a4b")
    assert first == item_tid(when, "65a1b2c3d4e5f60718293a4b")
    assert decode_tid(first)[0] == micros_of(when)
    bumped = item_tid(when, "65a1b2c3d4e5f60718293a4b", taken={first})
    assert bumped != first and decode_tid(bumped)[0] == micros_of(when) + 1


def test_is_tid_rejects_other_keys():
    assert not is_tid("self")
    assert not is_tid("zzzzzzzzzzzzz")  # top bit set
    assert not is_tid("3jzfcijpj2z2a".upper())


def test_blob_cid_decodes_as_raw_sha256():
    data = b"pixel art"
    cid = CID.decode(blob_cid(data))
    assert cid.version == 1 and cid.codec == 0x55
    assert cid.hash.code == 0x12 and cid.hash.digest == hashlib.sha256(data).digest()


# The atproto interop test vectors (bluesky-social/atproto, interop-test-files/syntax/tid_syntax_*.txt).
VALID_TIDS = [
    "3jzfcijpj2z2a",
    "7777777777777",
    "3zzzzzzzzzzzz",
    "a222222222222",
    "j222222222222",
    "azzzzzzzzzzzz",
]
INVALID_TIDS = [
    "3jzfcijpj2z21", "0000000000000", "3JZFCIJPJ2Z2A", "3jzfcijpj2z2aa", "3jzfcijpj2z2", "222",
    "3jzf-cij-pj2z-2a", "zzzzzzzzzzzzz", "kjzfcijpj2z2a",
]  # fmt: skip
ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def test_tids_follow_the_specs_interop_vectors_and_the_atproto_sdk():
    assert [t for t in VALID_TIDS if not is_tid(t)] == []
    assert [t for t in INVALID_TIDS if is_tid(t)] == []
    for tid in VALID_TIDS:  # decoded as the spec's 64-bit integer: 53 bits of microseconds, 10 of clock id
        value = 0
        for char in tid:
            value = value * 32 + ALPHABET.index(char)
        assert decode_tid(tid) == (value >> 10, value & 1023)
        if value < 2**63:  # the spec's top bit 0 (syntax alone admits a first letter up to "j")
            assert encode_tid(*decode_tid(tid)) == tid
    # ours, for any time the platform holds, are TIDs by the atproto SDK's rule too
    for when in (datetime(2019, 1, 1, tzinfo=UTC), datetime(2026, 12, 1, 23, 59, 59, 999000, tzinfo=UTC)):
        for ref in ("65a1b2c3d4e5f60718293a4b", "anonymous", ""):
            tid = item_tid(when, ref)
            assert TID_RE.match(tid) and is_tid(tid), tid
    assert all(TID_RE.match(t) for t in VALID_TIDS) and not any(TID_RE.match(t) for t in INVALID_TIDS)
