"""TIDs and blob CIDs: the pure helpers behind record keys and blob identity."""

import hashlib
from datetime import UTC, datetime

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
