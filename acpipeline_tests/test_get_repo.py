"""A whole repository from one `com.atproto.sync.getRepo`: against the real reference PDS it gives exactly
what paged `listRecords` gives and names the latest commit; and as untrusted input every fault of a CAR (cut,
altered, too large, another account's, a broken MST) is a RepoError naming it, a body too large is not read
past the bound, and nothing else escapes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import libipld
import pytest
from PIL import Image

from acpipeline.core.batches import encode_body
from acpipeline.core.tid import encode_tid
from acpipeline.resources.pds import PdsClient, PdsError, RepoError, RepoLimits, parse_repo

MiB = 1 << 20
GET_REPO = "com.atproto.sync.getRepo"
PAINTING = "computer.aesthetic.painting"
MOOD = "computer.aesthetic.mood"
VALUES = "com.example.values"
MOODS = 250  # more than 100: listRecords answers it in three pages
DID = "did:plc:testaccount000000000000"
CREATE = "com.atproto.repo.applyWrites#create"


# --- CARs built here (libipld encodes DAG-CBOR; it has no CAR writer) ---------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def cid_of(data: bytes, codec: int = 0x71) -> bytes:
    return bytes([1, codec, 0x12, 0x20]) + hashlib.sha256(data).digest()


def block(value: Any) -> tuple[bytes, bytes]:
    data = libipld.encode_dag_cbor(value)
    return cid_of(data), data


def car(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> bytes:
    header = libipld.encode_dag_cbor({"version": 1, "roots": roots})
    out = bytearray(varint(len(header)) + header)
    for cid, data in blocks:
        out += varint(len(cid) + len(data)) + cid + data
    return bytes(out)


def sections(data: bytes) -> list[tuple[int, int, int]]:
    """Each block section of a CAR: (start of its length varint, start of its block's bytes, its end)."""
    found = []
    length, position = _read_varint(data, 0)
    position += length
    while position < len(data):
        start = position
        length, position = _read_varint(data, position)
        found.append((start, position + 36, position + length))  # 36: a CIDv1 sha-256's bytes
        position += length
    return found


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def commit(mst_root: bytes, did: str = DID, **changes: Any) -> tuple[bytes, bytes]:
    fields = {"did": did, "version": 3, "data": mst_root, "rev": "3kabc2aaaaa22", "prev": None}
    return block({**fields, "sig": b"s" * 64, **changes})


def record(n: int, collection: str = VALUES) -> tuple[bytes, bytes]:
    return block({"$type": collection, "n": n})


def flat_repo(keys: list[str], did: str = DID) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """A repository of one MST node with a record per key (prefix-compressed as the PDS does): (CAR, the
    node's CID, its blocks)."""
    records = [record(n) for n in range(len(keys))]
    entries, previous = [], b""
    for key, (cid, _) in zip(keys, records, strict=True):
        raw = key.encode()
        shared = len(_common_prefix(previous, raw))
        entries.append({"p": shared, "k": raw[shared:], "v": cid, "t": None})
        previous = raw
    node = block({"l": None, "e": entries})
    root = commit(node[0], did)
    blocks = [root, node, *records]
    return car([root[0]], blocks), node[0], blocks


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def refused(data: bytes, did: str = DID, limits: RepoLimits | None = None) -> str:
    """The message of the RepoError parse_repo raises (any other outcome fails the test)."""
    with pytest.raises(RepoError) as caught:
        parse_repo(data, did, limits or RepoLimits())
    return str(caught.value)


# --- the real PDS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(pds_url, tmp_path_factory) -> Iterator[PdsClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACPIPELINE_HOME", str(tmp_path_factory.mktemp("home")))
        pds = PdsClient(pds_url)
        yield pds
        pds.close()


def new_account(client: PdsClient) -> tuple[str, str]:
    handle = f"getrepo{secrets.token_hex(3)}.test"
    password = secrets.token_urlsafe(16)
    return client.create_account(handle, password, f"{handle}@example.com"), password


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


def create_all(client: PdsClient, session, did: str, collection: str, values: list[dict[str, Any]]) -> None:
    for start in range(0, len(values), 200):
        writes = [
            {
                "$type": CREATE,
                "collection": collection,
                "rkey": encode_tid(1_700_000_000_000_000 + n, 7),
                "value": v,
            }
            for n, v in enumerate(values[start : start + 200], start)
        ]
        client.apply_writes(session, encode_body({"repo": did, "writes": writes}))


@pytest.fixture(scope="module")
def account(client) -> str:
    """Paintings with a blob each, 250 moods, and records holding every kind of value the data model has."""
    did, password = new_account(client)
    session = client.session(did, password)
    blob = client.upload_blob(session, png(), "image/png")
    paintings = [
        {"$type": PAINTING, "slug": f"p{n}", "when": "2024-03-01T12:00:00.000Z", "thumbnail": blob}
        for n in range(5)
    ]
    moods = [{"$type": MOOD, "mood": f"mood {n} ✓", "when": "2024-03-01T12:00:00.000Z"} for n in range(MOODS)]
    values = [
        {
            "$type": VALUES,
            "bytes": [
                {"$bytes": base64.b64encode(bytes(range(250, 250 + n))).decode().rstrip("=")}
                for n in (1, 2, 3, 4)
            ],
            "link": {"$link": blob["ref"]["$link"]},
            "blob": blob,
            "nested": [{"x": [1, -2, 0, True, False, None, "", "é 🎨"], "empty": {}, "none": []}],
            "big": 2**53 - 1,
        },
        {"$type": VALUES, "text": "x" * 5000},
    ]
    create_all(client, session, did, PAINTING, paintings)
    create_all(client, session, did, MOOD, moods)
    create_all(client, session, did, VALUES, values)
    return did


def as_listed(client: PdsClient, did: str, collection: str) -> list[tuple[str, str, str]]:
    """listRecords' answer as (rkey, cid, value as canonical JSON), in rkey order."""
    listed = [
        (r["uri"].rsplit("/", 1)[1], r["cid"], json.dumps(r["value"], sort_keys=True))
        for r in client.list_records(did, collection)
    ]
    return sorted(listed)


def as_read(records) -> list[tuple[str, str, str]]:
    return [(r.rkey, r.cid, json.dumps(r.value, sort_keys=True)) for r in records]


def latest_commit(client: PdsClient, did: str) -> dict[str, str]:
    return client.call("GET", "com.atproto.sync.getLatestCommit", params={"did": did})


def car_of(client: PdsClient, did: str) -> bytes:
    return client.send("GET", GET_REPO, params={"did": did}, max_bytes=64 * MiB).content


def test_get_repo_gives_what_list_records_gives_at_the_latest_commit(client, account):
    snapshot = client.get_repo(account)
    assert sorted(snapshot.records) == sorted([PAINTING, MOOD, VALUES])
    for collection in (PAINTING, MOOD, VALUES):
        read = as_read(snapshot.collection(collection))
        assert read == as_listed(client, account, collection), collection  # same order: rkey order
    assert len(snapshot.collection(MOOD)) == MOODS
    thumbnail = snapshot.collection(PAINTING)[0].value["thumbnail"]
    assert thumbnail["$type"] == "blob" and thumbnail["ref"]["$link"].startswith("bafkrei")
    shown = snapshot.collection(VALUES)[0].value["bytes"]
    assert [b["$bytes"] for b in shown] == ["+g", "+vs", "+vv8", "+vv8/Q"]  # standard base64, unpadded
    latest = latest_commit(client, account)
    assert (snapshot.did, snapshot.commit_cid, snapshot.rev) == (account, latest["cid"], latest["rev"])
    assert snapshot.collection("com.example.absent") == []


def test_an_empty_repository(client):
    did, _ = new_account(client)
    snapshot = client.get_repo(did)
    assert snapshot.records == {}
    latest = latest_commit(client, did)
    assert (snapshot.commit_cid, snapshot.rev) == (latest["cid"], latest["rev"])


def test_get_repo_of_an_unknown_account_is_the_pds_error(client):
    """An error answer is read within the bound too, and raised as the PDS said it (not a RepoError)."""
    with pytest.raises(PdsError) as caught:
        client.get_repo("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
    assert not isinstance(caught.value, RepoError)
    assert (caught.value.status, caught.value.error) == (400, "RepoNotFound"), caught.value


@pytest.fixture(scope="module")
def real_car(client, account) -> bytes:
    return car_of(client, account)


def test_a_real_car_cut_anywhere_is_refused(real_car, account):
    """At every section boundary (a CAR that parses as a CAR but lacks blocks), inside every section, and
    in the header."""
    cuts = {0, 1, 5, len(real_car) - 1}
    for start, block_start, end in sections(real_car):
        cuts |= {start, start + 1, block_start - 1, (block_start + end) // 2}
    cuts.discard(len(real_car))
    for cut in sorted(cuts):
        message = refused(real_car[:cut], account)
        assert "truncated" in message or "missing from the CAR" in message, (cut, message)


def test_a_real_car_with_one_altered_byte_is_refused(real_car, account):
    for _, block_start, end in sections(real_car)[:: max(1, len(sections(real_car)) // 25)]:
        altered = bytearray(real_car)
        altered[(block_start + end) // 2] ^= 0x01
        assert "does not hash to its CID" in refused(bytes(altered), account)


def test_a_real_car_over_the_limits_is_refused(real_car, account):
    blocks = len(sections(real_car))
    assert parse_repo(real_car, account, RepoLimits(max_bytes=len(real_car), max_blocks=blocks))
    assert "over the" in refused(real_car, account, RepoLimits(max_bytes=len(real_car) - 1))
    assert "more than the" in refused(real_car, account, RepoLimits(max_blocks=blocks - 1))
    assert "deeper than the 1 levels" in refused(real_car, account, RepoLimits(max_depth=1))


def test_a_real_car_read_for_another_account_is_refused(real_car, account):
    assert f"commit is for another account, {account!r}" in refused(real_car, "did:plc:someoneelse")


# --- CARs built to be wrong in one way each -----------------------------------------------------------------


def test_a_built_repository_parses():
    """The control for the tests below: each differs from this in one fault."""
    keys = [f"{VALUES}/a", f"{VALUES}/ab", f"{VALUES}/b", f"{MOOD}x.y/c"]
    data, _, _ = flat_repo(sorted(keys))
    snapshot = parse_repo(data, DID, RepoLimits())
    assert {c: [r.rkey for r in rs] for c, rs in snapshot.records.items()} == {
        f"{MOOD}x.y": ["c"],
        VALUES: ["a", "ab", "b"],
    }


def test_a_commit_for_another_did_is_refused():
    data, _, _ = flat_repo([f"{VALUES}/a"], did="did:plc:another")
    assert "commit is for another account, 'did:plc:another'" in refused(data)


@pytest.mark.parametrize(
    "changes, fault",
    [
        ({"version": 2}, "not a version 3 commit"),
        ({"did": None}, "not a version 3 commit"),
        ({"data": "not a link"}, "not a version 3 commit"),
        ({"rev": 5}, "not a version 3 commit"),
    ],
)
def test_a_root_that_is_no_commit_is_refused(changes, fault):
    _, node_cid, blocks = flat_repo([f"{VALUES}/a"])
    root = commit(node_cid, **changes)
    assert fault in refused(car([root[0]], [root, *blocks[1:]]))


def test_a_root_that_is_an_mst_node_is_refused():
    _, node_cid, blocks = flat_repo([f"{VALUES}/a"])
    assert "is not a version 3 commit" in refused(car([node_cid], blocks))


@pytest.mark.parametrize("roots", [0, 2])
def test_a_header_without_exactly_one_root_is_refused(roots):
    _, _, blocks = flat_repo([f"{VALUES}/a"])
    assert f"names {roots} roots, not exactly one" in refused(car([blocks[0][0]] * roots, blocks))


def test_a_missing_record_block_is_refused():
    _, _, blocks = flat_repo([f"{VALUES}/a", f"{VALUES}/b"])
    message = refused(car([blocks[0][0]], blocks[:-1]))
    assert f"record {VALUES}/b" in message and "missing from the CAR" in message


def test_a_missing_mst_node_is_refused():
    _, _, blocks = flat_repo([f"{VALUES}/a"])
    message = refused(car([blocks[0][0]], [blocks[0], *blocks[2:]]))
    assert "MST node" in message and "missing from the CAR" in message


def mst(entries: list[tuple[str, bytes | None]], left: bytes | None = None) -> tuple[bytes, bytes]:
    """One MST node: (key, subtree after it) per entry, uncompressed keys, each record `record(0)`."""
    return block({"l": left, "e": [{"p": 0, "k": k.encode(), "v": record(0)[0], "t": t} for k, t in entries]})


def repo_of(root_node: tuple[bytes, bytes], *nodes: tuple[bytes, bytes]) -> bytes:
    root = commit(root_node[0])
    return car([root[0]], [root, root_node, *nodes, record(0)])


def test_an_mst_node_reached_twice_is_refused():
    """What a cycle looks like in a CAR whose blocks hash to their CIDs (a node cannot hold its own hash):
    the same subtree under two links."""
    child = mst([(f"{VALUES}/a", None)])
    root = mst([(f"{VALUES}/b", child[0])], left=child[0])
    assert "reached twice (a cycle or a shared subtree)" in refused(repo_of(root, child))


def test_an_mst_deeper_than_the_limit_is_refused():
    nodes = [mst([(f"{VALUES}/a", None)])]
    for _ in range(70):
        nodes.append(mst([], left=nodes[-1][0]))
    assert "deeper than the 64 levels allowed" in refused(repo_of(nodes[-1], *nodes[:-1]))


@pytest.mark.parametrize(
    "build",
    [
        lambda: repo_of(mst([(f"{VALUES}/b", None), (f"{VALUES}/a", None)])),
        lambda: repo_of(mst([(f"{VALUES}/a", None), (f"{VALUES}/a", None)])),
        lambda: (lambda child: repo_of(mst([(f"{VALUES}/b", None)], left=child[0]), child))(
            mst([(f"{VALUES}/c", None)])
        ),
    ],
    ids=["within-a-node", "repeated", "across-levels"],
)
def test_mst_keys_out_of_order_are_refused(build):
    assert "out of order" in refused(build())


@pytest.mark.parametrize(
    "key", ["nocollection", f"{VALUES}/", "notannsid/a", f"{VALUES}/a b", f"{VALUES}/.."]
)
def test_an_mst_key_that_is_not_collection_and_rkey_is_refused(key):
    assert "is not collection/rkey" in refused(repo_of(mst([(key, None)])))


def test_a_malformed_mst_entry_is_refused():
    node = block({"l": None, "e": [{"p": 3, "k": b"x", "v": record(0)[0], "t": None}]})  # p past no key
    assert "malformed entry" in refused(repo_of(node))
    assert "is not an MST node" in refused(repo_of(block({"l": None})))


def test_blocks_of_other_codecs_or_hashes_are_refused():
    _, node_cid, blocks = flat_repo([f"{VALUES}/a"])
    data = b"\x00" * 10
    dag_pb = (bytes([1, 0x70, 0x12, 0x20]) + hashlib.sha256(data).digest(), data)
    assert "codec 0x70, not dag-cbor or raw" in refused(car([blocks[0][0]], [*blocks, dag_pb]))
    sha512 = (bytes([1, 0x71, 0x13, 0x40]) + hashlib.sha512(data).digest(), data)
    assert "not addressed by sha-256" in refused(car([blocks[0][0]], [*blocks, sha512]))
    raw_node = (cid_of(blocks[1][1], 0x55), blocks[1][1])  # the node's bytes, as a raw block
    root = commit(raw_node[0])
    assert "is a raw block, not DAG-CBOR" in refused(car([root[0]], [root, raw_node, *blocks[2:]]))


def test_a_record_whose_bytes_look_like_a_link_is_refused():
    """libipld decodes links and byte strings alike: such a record cannot be given as listRecords does."""
    shaped = record(1)[0]  # the bytes of a CID, stored as a byte string (major type 2), not a link
    data = b"\xa2" + b"\x65$type" + libipld.encode_dag_cbor(VALUES) + b"\x65bytes" + b"\x58\x24" + shaped
    assert libipld.decode_dag_cbor(data) == {"$type": VALUES, "bytes": shaped}
    rec = (cid_of(data), data)
    node = block({"l": None, "e": [{"p": 0, "k": f"{VALUES}/a".encode(), "v": rec[0], "t": None}]})
    root = commit(node[0])
    assert "does not re-encode to its own bytes" in refused(car([root[0]], [root, node, rec]))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x05hello", b"\x01\xa0"],
    ids=["empty", "empty-header", "long-varint", "not-cbor", "header-without-roots"],
)
def test_garbage_is_refused(data):
    refused(data)


# --- a hostile server ---------------------------------------------------------------------------------------


class HostileServer:
    """Answers getRepo with `body` (bytes), or with `size` bytes of junk generated as it sends, counting what
    it managed to send before the client hung up; its first `cut` answers break off halfway."""

    def __init__(
        self, body: bytes = b"", size: int = 0, declare_length: bool = False, encoding: str = "", cut: int = 0
    ):
        self.body, self.size, self.declare_length, self.encoding = body, size, declare_length, encoding
        self.cut = cut
        self.answers = 0
        self.sent = 0
        self.finished = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.close_connection = True  # one answer per connection
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up
                finally:
                    server.finished.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        self.answers += 1
        total = len(self.body) or self.size
        cut_at = total // 2 if self.answers <= self.cut else total
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.ipld.car")
        if self.encoding:
            handler.send_header("Content-Encoding", self.encoding)
        handler.send_header(
            *(("Content-Length", str(total)) if self.declare_length else ("Transfer-Encoding", "chunked"))
        )
        handler.end_headers()
        junk = b"\x00" * (64 * 1024)
        position = 0
        while position < cut_at:
            chunk = self.body[position : position + len(junk)] if self.body else junk[: total - position]
            handler.wfile.write(chunk if self.declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.sent += len(chunk)
            position += len(chunk)
        if not self.declare_length and cut_at == total:
            handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def hostile(tmp_path, monkeypatch) -> Iterator[list[HostileServer]]:
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path))
    servers: list[HostileServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(hostile: list[HostileServer], **options: Any) -> PdsClient:
    server = HostileServer(**options)
    hostile.append(server)
    return PdsClient(server.url, retry_budget_s=2)


def big_repo() -> bytes:
    """A valid CAR of about 3 MB: 600 records of 5,000 characters."""
    keys = sorted(f"{VALUES}/r{n:04d}" for n in range(600))
    records = [block({"$type": VALUES, "text": f"{n}" + "x" * 5000}) for n in range(600)]
    node = block(
        {
            "l": None,
            "e": [
                {"p": 0, "k": k.encode(), "v": r[0], "t": None} for k, r in zip(keys, records, strict=True)
            ],
        }
    )
    root = commit(node[0])
    return car([root[0]], [root, node, *records])


def test_get_repo_reads_a_big_car_within_the_limit_and_refuses_it_over(hostile):
    body = big_repo()
    client = serve(hostile, body=body)
    assert len(client.get_repo(DID, RepoLimits(max_bytes=len(body))).collection(VALUES)) == 600
    with pytest.raises(RepoError, match=f"over the {MiB:,} bytes allowed"):
        client.get_repo(DID, RepoLimits(max_bytes=MiB))
    client.close()


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_get_repo_reads_again_after_an_answer_that_broke_off(hostile, declare_length):
    """The body is read inside the transport's retries: a connection lost halfway is retried like any
    other lost answer."""
    client = serve(hostile, body=big_repo(), declare_length=declare_length, cut=2)
    assert len(client.get_repo(DID).collection(VALUES)) == 600
    assert hostile[0].answers == 3
    client.close()


def test_get_repo_stops_reading_a_body_past_max_bytes(hostile):
    """An endless answer: the client hangs up once past the bound, so the server cannot send much more
    than the bound and the socket buffers hold."""
    server_size = 1 << 30
    client = serve(hostile, size=server_size)
    with pytest.raises(RepoError, match="stopped reading there"):
        client.get_repo(DID, RepoLimits(max_bytes=MiB))
    client.close()
    assert hostile[0].finished.wait(30)
    assert hostile[0].sent < 64 * MiB, hostile[0].sent


def test_get_repo_refuses_a_declared_length_over_max_bytes_before_reading(hostile):
    client = serve(hostile, size=1 << 30, declare_length=True)
    with pytest.raises(RepoError, match=f"the answer is {1 << 30:,} bytes, over the {MiB:,} allowed"):
        client.get_repo(DID, RepoLimits(max_bytes=MiB))
    client.close()
    assert hostile[0].finished.wait(30)
    assert hostile[0].sent < 64 * MiB, hostile[0].sent


def test_get_repo_refuses_a_compressed_answer(hostile):
    """Asked for identity, a compressed answer could inflate past any bound: refused unread."""
    client = serve(hostile, body=big_repo(), encoding="gzip")
    with pytest.raises(PdsError, match="Content-Encoding 'gzip'"):
        client.get_repo(DID)
    client.close()


def test_get_repo_refuses_a_hostile_car_as_a_repo_error(hostile):
    data, _, _ = flat_repo([f"{VALUES}/b", f"{VALUES}/a"])  # out of order
    client = serve(hostile, body=data)
    with pytest.raises(RepoError, match="out of order"):
        client.get_repo(DID)
    client.close()
