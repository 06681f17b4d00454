"""Security: secrets stay in the session files, sessions are owner-only, and media is fetched only from the
configured storage hosts."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from bson import ObjectId
from dagster import Definitions, in_process_executor

from acpipeline.core.items import Item, ItemProblem
from acpipeline.core.media import PAINTING, TAPE
from acpipeline.definitions import build_resources
from acpipeline.errors import OperatorError
from acpipeline.localpds.server import free_port
from acpipeline.resources.pds import PdsClient, PdsError, Session, _save_session, _session_path
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import DEFAULT_GUEST_IMAGE_URL, DEFAULT_IMAGE_URL, DEFAULT_ZIP_URL
from acpipeline.sync.assets import atproto_records, media_blobs, source_items
from acpipeline.sync.extract import Account
from acpipeline.sync.runner import run_partitions

from .faultproxy import FaultProxy, StubStorage
from .helpers import T0, add_moods, add_user, records, row_values
from .test_reliability import APPLY, LOGIN, REFRESH, USER_BUCKET, add_paintings, expire_access, tiny_png

PROJECT = Path(__file__).resolve().parents[1]


def _session_tokens(home: Path) -> set[str]:
    tokens = set()
    for path in (home / "sessions").glob("*.json"):
        data = json.loads(path.read_text())
        tokens |= {data["accessJwt"], data["refreshJwt"]}
    return tokens


def _answer_tokens(proxy: FaultProxy) -> set[str]:
    tokens = set()
    for _, body in proxy.answers:
        try:
            data = json.loads(body)
        except ValueError:
            continue
        tokens |= {data[k] for k in ("accessJwt", "refreshJwt") if isinstance(data.get(k), str)}
    return tokens


def _hits(secret_values: set[str], blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, which secret) for every secret found in any of the blobs (also JSON-escaped forms)."""
    found = []
    for where, data in blobs.items():
        for value in secret_values:
            forms = {value.encode(), json.dumps(value)[1:-1].encode()}
            if any(form in data for form in forms):
                found.append((where, value[:6] + "..."))
    return found


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes; for each SQLite database also its tables' values, with what Dagster stores
    zlib-compressed (run and plan snapshots) decompressed, which a grep of the file cannot see."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = found[str(path.relative_to(root))] = path.read_bytes()
        if data.startswith(b"SQLite format 3\x00"):
            found[f"{path.relative_to(root)} (tables, decompressed)"] = _sqlite_values(path)
    return found


def _sqlite_values(path: Path) -> bytes:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        # the table names come from the file itself
        return b"\n".join(row_values(db.execute(f'select * from "{table}"')) for table in tables)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acpipeline.cli", *args],
        cwd=PROJECT,
        env=dict(os.environ),
        capture_output=True,
        timeout=600,
        check=False,
    )


def test_passwords_and_tokens_never_reach_logs_run_metadata_or_output(world, monkeypatch, tmp_path):
    """A sync through the CLI (a real on-disk Dagster instance under DAGSTER_HOME) with a login, a session
    refresh, a failed login, retried faults and a failed partition; then every file under DAGSTER_HOME and
    everything the CLI printed is searched for every password and every token that existed."""
    admin_password = secrets.token_urlsafe(18)
    monkeypatch.setenv("PDS_ADMIN_PASSWORD", admin_password)
    db = world.db()
    keeper_sub, keeper, keeper_did = add_user(world, db, "keeper")
    add_moods(db, keeper_sub, [f"mood {i}" for i in range(250)])
    add_paintings(world, db, keeper_sub, 2)
    refresher_sub, refresher, refresher_did = add_user(world, db, "refresher")
    add_moods(db, refresher_sub, ["fresh"])
    relogin_sub, relogin, relogin_did = add_user(world, db, "relogin")
    add_moods(db, relogin_sub, ["again"])
    wrong_sub, wrong, wrong_did = add_user(world, db, "wrongpw")
    add_moods(db, wrong_sub, ["locked out"])
    wrong_password = "Wr0ng-" + secrets.token_urlsafe(12)
    db["users"].update_one({"_id": wrong_sub}, {"$set": {"atproto.password": wrong_password}})
    passwords = {u["atproto"]["password"] for u in db["users"].find({})} | {admin_password}
    assert wrong_password in passwords and len(passwords) == 5

    tokens = _session_tokens(world.home)  # as created; the run refreshes or replaces some of them
    expire_access(refresher_did)
    _session_path(relogin_did).unlink()
    _session_path(wrong_did).unlink()
    proxy = FaultProxy(
        world.pds_url,
        script={(APPLY, 1): "502_after", (APPLY, 3): "500", (LOGIN, 1): "502"},
        keep_answers=frozenset({LOGIN, REFRESH}),
    ).start()
    monkeypatch.setenv("PDS_URL", proxy.url)
    try:
        plain = _cli("sync", "--media", "mood,painting")
        as_json = _cli("sync", "--media", "mood", "--handle", wrong, "--handle", keeper, "--json")
        status = _cli("status", "--handle", keeper)
    finally:
        proxy.stop()
    tokens |= _session_tokens(world.home) | _answer_tokens(proxy)

    # The run did what the scan needs: logins, a refresh, a failed login, several partitions synced.
    assert proxy.requests[REFRESH] >= 1 and proxy.requests[LOGIN] >= 3
    assert len(tokens) >= 10
    assert plain.returncode == 1 and as_json.returncode == 1 and status.returncode == 0
    assert len(records(world, keeper_did, "computer.aesthetic.mood")) == 250
    assert len(records(world, relogin_did, "computer.aesthetic.mood")) == 1
    assert records(world, wrong_did, "computer.aesthetic.mood") == []

    dagster_home = Path(os.environ["DAGSTER_HOME"])
    scanned = {f"dagster_home/{k}": v for k, v in _files(dagster_home).items()}
    for name, result in (("sync", plain), ("sync --json", as_json), ("status", status)):
        scanned[f"{name} stdout"] = result.stdout
        scanned[f"{name} stderr"] = result.stderr
    # The scan sees what it should: the runs' event logs, with the failed login's reason in them.
    everything = b"".join(scanned.values())
    assert keeper_did.encode() in everything and f"login as {wrong_did} failed".encode() in everything
    assert b"AuthenticationRequired" in everything
    # ... and inside the plan snapshots Dagster compresses, which no grep of the files can see
    unpacked = b"".join(v for k, v in scanned.items() if k.endswith("(tables, decompressed)"))
    raw = b"".join(v for k, v in scanned.items() if not k.endswith("(tables, decompressed)"))
    assert b"ExecutionPlanSnapshot" in unpacked and b"ExecutionPlanSnapshot" not in raw

    hits = _hits(passwords | tokens, scanned)
    assert hits == [], hits
    print(
        f"\nFIGURES secrets scan: {len(passwords)} passwords and {len(tokens)} tokens in "
        f"{len(scanned)} files and outputs: {len(hits)} found"
    )


def test_failed_login_names_the_account_never_the_password(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "typo")
    _session_path(did).unlink()
    wrong = "Secret-" + secrets.token_urlsafe(10)
    with pytest.raises(PdsError) as failure:
        PdsClient(world.pds_url).session(did, wrong)
    text = "".join(traceback.format_exception(failure.value))
    assert f"login as {did} failed" in str(failure.value) and "AuthenticationRequired" in str(failure.value)
    assert wrong not in text and wrong not in repr(failure.value)


def test_errors_and_reprs_carry_no_tokens(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "reprs")
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    client = PdsClient(world.pds_url)
    session = client.session(did, password)
    assert session.access not in repr(session) and session.refresh not in repr(session)
    account = Account(handle, did, password, sub)
    assert password not in repr(account) and password not in str(account)

    bad_write = json.dumps({"repo": did, "writes": [{"$type": "nonsense"}]}).encode()
    with pytest.raises(PdsError) as failure:
        client.apply_writes(session, bad_write)
    text = "".join(traceback.format_exception(failure.value))
    assert failure.value.status == 400
    for secret in (session.access, session.refresh, password):
        assert secret not in text


def test_pds_url_credentials_stay_out_of_messages():
    port = free_port()
    with pytest.raises(OperatorError) as failure:
        PdsClient(f"http://admin:hunter2-secret@127.0.0.1:{port}", retry_budget_s=1).describe_server()
    assert "hunter2" not in str(failure.value) and f"127.0.0.1:{port}" in str(failure.value)


def test_every_http_client_verifies_certificates_with_one_shared_context():
    import ssl

    from acpipeline.resources.tls import tls_context

    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded
    pds = PdsClient("https://pds.example")
    storage = StorageResource().http()
    try:
        for client in (pds.http, storage):
            assert client._transport._pool._ssl_context is context
    finally:
        pds.close()
        storage.close()


def test_cached_sessions_are_owner_only(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "private")
    folder = world.home / "sessions"
    folder.chmod(0o755)  # someone loosened it: the next save tightens it again
    leftover = _session_path(did).with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    leftover.write_text("{}")
    leftover.chmod(0o644)
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        _save_session(Session(did, handle, "a.b.c", "d.e.f"))
        PdsClient(world.pds_url).session(did, db["users"].find_one({"_id": sub})["atproto"]["password"])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.glob("*"))
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]


# -- fetch safety ----------------------------------------------------------------------------------------

LOCAL = {
    "image_url": "http://127.0.0.1:8000/{bucket}/{user}/painting/{slug}.png",
    "guest_image_url": "http://127.0.0.1:8000/{bucket}/{slug}.png",
    "zip_url": "http://127.0.0.1:8000/{bucket}/{user_dir}{slug}.zip",
}
PRODUCTION = {
    "image_url": DEFAULT_IMAGE_URL,
    "guest_image_url": DEFAULT_GUEST_IMAGE_URL,
    "zip_url": DEFAULT_ZIP_URL,
}
BAD_BUCKETS = [
    "evil.com",
    "art-aesthetic-computer.evil.com",
    "user-aesthetic-computer@evil.com",
    "user-aesthetic-computer/..",
    "USER-AESTHETIC-COMPUTER",
    "127.0.0.1:9",
    "",
    42,
]
BAD_SLUGS = [
    "../secret",
    "a/../../b",
    "http://evil.com/x",
    "//evil.com/x",
    "@evil.com",
    "x@evil.com",
    "a%2F..%2Fb",
    "%2e%2e",
    "a\\b",
    ".",
    "..",
    "a b",
    "x?y=1",
    "x#y",
    "a\x00b",
    "a\nb",
    "\u2025",  # two dot leader
    "a\uff0fb",  # fullwidth solidus
    "",
    None,
]
BAD_USERS = ["../x", "a/b", ".", "..", "%2e%2e", "x:y@evil.com", "u\\..", "a\x00", "évil", 7]


def _image_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(PAINTING.image_file(item))


def _recording_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(PAINTING.recording_file(item))


def _tape_zip_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(TAPE.zip_file(item))


def _painting(bucket, slug, owner="auth0|abc") -> Item:
    return Item(
        media="painting",
        ref="0" * 24,
        owner=owner,
        when=T0,
        data={"bucket": bucket, "slug": slug, "image_slug": slug, "recording_slug": slug},
    )


@pytest.mark.parametrize("templates", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_storage_urls_never_leave_the_storage_host(templates):
    storage = StorageResource(**templates)
    hosts = {
        "127.0.0.1:8000",
        "user-aesthetic-computer.sfo3.digitaloceanspaces.com",
        "art-aesthetic-computer.sfo3.digitaloceanspaces.com",
    }
    tried = 0
    for owner in ("auth0|abc", None):
        for bucket in BAD_BUCKETS:
            with pytest.raises(ItemProblem, match="bucket"):
                _image_url(storage, _painting(bucket, "ok", owner))
            tried += 1
        for slug in BAD_SLUGS:
            item = _painting(USER_BUCKET, slug, owner)
            for build in (_image_url, _recording_url, _tape_zip_url):
                with pytest.raises(ItemProblem, match="slug"):
                    build(storage, item)
                tried += 1
    for user in BAD_USERS:
        with pytest.raises(ItemProblem, match="user"):
            _image_url(storage, _painting(USER_BUCKET, "ok", user))
        tried += 1
    # What real data looks like stays on the storage host, the user quoted into one path segment.
    for owner, slug in (
        ("auth0|63f0a1", "2023.8.24.16.21.09.123"),
        ("sotce-x@y.z", "a-b_c"),
        (None, "04i9I27L"),
    ):
        url = _image_url(storage, _painting(USER_BUCKET, slug, owner))
        parts = urlsplit(url)
        assert parts.netloc in hosts and not parts.query and "@" not in parts.path, url
    print(f"\nFIGURES storage URL checks: {tried} hostile bucket/slug/user values refused")


def test_hostile_documents_fetch_nothing_elsewhere_end_to_end(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "hostile")
    good = add_paintings(world, db, sub, 1)
    canary = StubStorage(world.media_root).start()
    canary_host = canary.url.removeprefix("http://")
    hostile = {
        "bucket is another host": {"bucket": canary_host, "slug": "x"},
        "bucket not configured": {"bucket": "evil-bucket", "slug": "x"},
        "slug climbs out": {"bucket": USER_BUCKET, "slug": "../../../etc/passwd"},
        "slug is a URL": {"bucket": USER_BUCKET, "slug": f"{canary.url}/x"},
        "slug with @": {"bucket": USER_BUCKET, "slug": f"@{canary_host}/x"},
        "slug with encoded slashes": {"bucket": USER_BUCKET, "slug": "..%2F..%2Fx"},
        "redirected elsewhere": {"bucket": USER_BUCKET, "slug": "redirected"},
    }
    ids = {}
    for i, (name, fields) in enumerate(hostile.items()):
        doc = {"_id": ObjectId(), "user": sub, "code": f"h{i}", "when": T0 + timedelta(minutes=i), **fields}
        db["paintings"].insert_one(doc)
        ids[name] = str(doc["_id"])
    redirected = world.media_root / USER_BUCKET / sub / "painting" / "redirected.png"
    redirected.write_bytes(tiny_png(3))
    with StubStorage(world.media_root, {"redirected": f"redirect:{canary.url}/stolen.png"}) as storage:
        resources = build_resources()
        resources["storage"] = StorageResource(**storage.url_templates())
        defs = Definitions(
            assets=[source_items, media_blobs, atproto_records],
            resources=resources,
            executor=in_process_executor,
        )
        results, _ = run_partitions(defs, world.instance, [handle], ["painting"], full=True)
        asked = list(storage.asked)
    canary.stop()
    result = results[0]
    assert result.ok and result.check_passed, result.row()
    reasons = {f["ref"]: f["reason"] for f in result.row()["failed_items"]}
    assert set(reasons) == set(ids.values()), reasons
    assert "storage answered 302" in reasons[ids["redirected elsewhere"]]
    for name in ("bucket is another host", "bucket not configured"):
        assert "is not a configured storage bucket" in reasons[ids[name]], name
    for name in ("slug climbs out", "slug is a URL", "slug with @", "slug with encoded slashes"):
        assert "is not a plain storage name" in reasons[ids[name]], name
    assert canary.asked == []  # not one request reached the other host
    assert all(".." not in p and "%2F" not in p.upper() for p in asked), asked
    assert [r["value"]["ref"] for r in records(world, did, "computer.aesthetic.painting")] == [str(good[0])]


def test_sessions_in_mongodb_stay_out_of_files_and_errors(tmp_path, monkeypatch):
    """`ACPIPELINE_SHARED_STATE=mongodb`: a session goes to MongoDB's `acpipeline-sessions` only (no file
    under ACPIPELINE_HOME), and a MongoDB error names the account, never the document it was writing."""
    from pymongo.errors import WriteError

    from acpipeline.resources import shared_state
    from acpipeline.resources.pds import _load_session

    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("MONGODB_CONNECTION_STRING", raising=False)
    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, "mongodb")
    access, refresh = "acc." + secrets.token_urlsafe(24), "ref." + secrets.token_urlsafe(24)
    try:
        _save_session(Session("did:plc:shared", "h.example", access, refresh))
        assert _load_session("did:plc:shared") == Session("did:plc:shared", "h.example", access, refresh)
        assert not (tmp_path / "sessions").exists()
        assert shared_state.collection(shared_state.SESSIONS).count_documents({}) == 1
    finally:
        shared_state.close()

    class Refusing:
        def replace_one(self, *args, **kwargs):
            raise WriteError(f"document {args[1]} refused", 2, {"op": args[1]})

    monkeypatch.setattr(shared_state, "collection", lambda name: Refusing())
    with pytest.raises(OperatorError) as failure:
        _save_session(Session("did:plc:shared", "h.example", access, refresh))
    text = "".join(traceback.format_exception(failure.value))
    assert "did:plc:shared" in text and access not in text and refresh not in text

    monkeypatch.setenv(shared_state.SHARED_STATE_ENV, "postgres")
    with pytest.raises(OperatorError, match="ACPIPELINE_SHARED_STATE='postgres'"):
        _load_session("did:plc:shared")
