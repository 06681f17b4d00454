"""The platform's newer shapes (spec: "Since mid-2026") through a full sync of the small dataset, against
the real reference PDS: paintings in progress are no items (no record, no failure) and their editor's
secrets reach no log; sealed ones sync; the KidLisp records the platform wrote are adopted by their code
(its rkeys kept) and one whose piece MongoDB lacks is kept; the tape the platform linked under `at` is
adopted as it is; and a second full sync writes nothing.

The dataset is seeded once for the module as `acpipeline demo` seeds it (`seed_dataset`, then the
platform's own records with `write_platform_records`), and synced twice through the command line, so the
Dagster instance is a real one on disk under DAGSTER_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from dagster import DagsterInstance

from acpipeline.core.batches import MAX_BODY_BYTES, encode_body
from acpipeline.core.cid import blob_cid
from acpipeline.demo.dataset import USER_BUCKET, DatasetSummary, PlatformRecord, seed_dataset
from acpipeline.demo.environment import _batches, write_platform_records
from acpipeline.demo.media_server import MediaServer
from acpipeline.resources.pds import PdsClient

from .conftest import World
from .helpers import head, records, row_values

ROOT = Path(__file__).resolve().parents[1]
PAINTING, KIDLISP, TAPE = (f"computer.aesthetic.{name}" for name in ("painting", "kidlisp", "tape"))


@dataclass
class SyncedPartition:
    world: World
    db: Any
    summary: DatasetSummary
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    heads_before_second: dict[str, str]
    heads_after_second: dict[str, str]
    dagster_home: Path

    def rows(self, which: subprocess.CompletedProcess) -> dict[tuple[str, str], dict[str, Any]]:
        """The CLI's rows by (handle, media); the CLI's own output when it printed no JSON."""
        try:
            rows = json.loads(which.stdout)["partitions"]
        except (ValueError, KeyError):
            pytest.fail(f"the sync printed no JSON (exit {which.returncode}):\n{which.stderr[-3000:]}")
        return {(row["handle"], row["media"]): row for row in rows}

    def listed(self, did: str, nsid: str) -> list[dict[str, Any]]:
        return records(self.world, did, nsid)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acpipeline.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=ROOT,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def synced(pds_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncedPartition]:
    root = tmp_path_factory.mktemp("shapes")
    with pytest.MonkeyPatch.context() as env:
        home, dagster_home, media_root = root / "home", root / "dagster_home", root / "media"
        env.setenv("ACPIPELINE_HOME", str(home))
        env.setenv("DAGSTER_HOME", str(dagster_home))
        env.setenv("PDS_URL", pds_url)
        env.delenv("MONGODB_CONNECTION_STRING", raising=False)
        media_root.mkdir()
        media = MediaServer(media_root).start()
        for name, template in media.url_templates().items():
            env.setenv(f"ACPIPELINE_{name.upper()}", template)
        client = PdsClient(pds_url)
        try:
            world = World(pds_url, home, media_root, media, client, DagsterInstance.ephemeral())
            db = world.db()
            summary = seed_dataset(db, media_root, world.create_account_unique, size="small")
            write_platform_records(client, db, summary)
            first = _cli("sync", "--full", "--json")
            dids = [user.did for user in summary.users if user.did]
            heads = {did: head(world, did) for did in dids}
            second = _cli("sync", "--full", "--json")
            after = {did: head(world, did) for did in dids}
            yield SyncedPartition(world, db, summary, first, second, heads, after, dagster_home)
        finally:
            client.close()
            media.stop()


def _platform(summary: DatasetSummary, collection: str) -> list[PlatformRecord]:
    return [record for record in summary.platform_records if record.collection == collection]


def _deliberately_bad(summary: DatasetSummary) -> set[str]:
    """The demo's bad inputs: a missing image, a missing and a broken tape ZIP, an over-long news body."""
    bad = (summary.missing_image_painting, summary.missing_zip_tape, summary.broken_zip_tape)
    return {ref["_id"] for ref in bad if ref} | {summary.long_news_body["_id"]}


# ---------------------------------------------------------------------------------------------- seeding


def test_the_platform_records_exist_before_the_sync(synced: SyncedPartition) -> None:
    """What write_platform_records made: PDS-assigned TIDs, the tape's link under `at` (not `atproto`)."""
    summary = synced.summary
    assert len(summary.platform_records) == 6
    for record in summary.platform_records:
        assert record.uri == f"at://{record.did}/{record.collection}/{record.rkey}" and record.cid
    [tape] = _platform(summary, TAPE)
    doc = synced.db["tapes"].find_one({"_id": ObjectId(tape.ref)})
    assert doc["at"]["rkey"] == tape.rkey and doc["at"]["uri"] == tape.uri
    # `at` as tape-atproto.mjs wrote it, or as the sync wrote it back over it (the same record)
    assert doc["at"]["cid"] == tape.cid or doc.get("atproto", {}).get("rkey") == tape.rkey


def test_platform_writes_are_batched_within_the_pds_limits() -> None:
    """At most 200 creates and under ~1 MB a call (the platform dataset's heaviest account has dozens)."""
    assert _batches([{"code": f"c{i}"} for i in range(450)]) == [(0, 200), (200, 400), (400, 450)]
    big = [{"source": "x" * 45_000} for _ in range(45)]
    slices = _batches(big)
    assert slices[0][0] == 0 and slices[-1][1] == 45 and len(slices) == 3
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    for start, end in slices:
        body = encode_body({"repo": "did:plc:x", "writes": [{"value": v} for v in big[start:end]]})
        assert len(body) < MAX_BODY_BYTES


# ---------------------------------------------------------------------------------------------- the sync


def test_paintings_in_progress_are_no_items_and_sealed_ones_sync(synced: SyncedPartition) -> None:
    summary = synced.summary
    rows = synced.rows(synced.first)
    failed = {item["ref"]: item["reason"] for row in rows.values() for item in row["failed_items"]}
    wip_refs = {ref["_id"] for ref in summary.wip_paintings}
    assert not wip_refs & set(failed), {ref: failed[ref] for ref in wip_refs & set(failed)}
    assert set(failed) == _deliberately_bad(summary), failed

    wip_codes = {ref["code"] for ref in summary.wip_paintings}
    paintings = [
        record["value"]
        for did in (summary.user("jeffrey").did, summary.art_guest.did)
        for record in synced.listed(did, PAINTING)
    ]
    assert paintings
    assert not [v for v in paintings if v["ref"] in wip_refs or v["code"] in wip_codes or "wip" in v["slug"]]
    for doc in synced.db["paintings"].find({"_id": {"$in": [ObjectId(ref) for ref in wip_refs]}}):
        assert "atproto" not in doc and "at" not in doc  # nothing written back either

    by_ref = {}
    for value in paintings:
        by_ref.setdefault(value["ref"], []).append(value)
    for ref in summary.sealed_paintings:
        [value] = by_ref[ref["_id"]]
        assert value["slug"] == ref["slug"] and value["code"] == ref["code"]
        assert value["thumbnail"]["mimeType"] == "image/png"


def test_the_kidlisp_records_the_platform_wrote_are_adopted_by_their_code(synced: SyncedPartition) -> None:
    summary = synced.summary
    for record in _platform(summary, KIDLISP):
        if record.ref is None:
            continue
        listed = [r for r in synced.listed(record.did, KIDLISP) if r["value"]["code"] == record.value["code"]]
        assert [r["uri"] for r in listed] == [record.uri], "one record per code, the platform's rkey kept"
        value = listed[0]["value"]
        assert value.get("ref", record.ref) == record.ref  # the sync may add the `ref` it lacked
        assert {k: v for k, v in value.items() if k != "ref"} == record.value
        doc = synced.db["kidlisp"].find_one({"_id": ObjectId(record.ref)})
        if "atproto" in doc:  # a link written back names the platform's record
            assert doc["atproto"]["rkey"] == record.rkey

    # every projection row is one record: those without a platform record were created
    jeffrey, art = summary.user("jeffrey"), summary.art_guest
    for user in (jeffrey, art):
        codes = [r["value"]["code"] for r in synced.listed(user.did, KIDLISP)]
        assert len(codes) == len(set(codes))
        rows = [row for row in summary.kidlisp_projection_rows if (row["user"] or art.sub) == user.sub]
        assert {row["code"] for row in rows} <= set(codes)


def test_a_kidlisp_record_whose_piece_mongodb_lacks_is_kept(synced: SyncedPartition) -> None:
    summary = synced.summary
    [orphan] = [record for record in _platform(summary, KIDLISP) if record.ref is None]
    assert summary.orphan_kidlisp_records == [
        {"code": orphan.value["code"], "owner": orphan.owner, "handle": orphan.handle}
    ]
    listed = {r["uri"]: r for r in synced.listed(orphan.did, KIDLISP)}
    assert orphan.uri in listed, "the sync deleted the platform's record of a piece MongoDB lacks"
    assert listed[orphan.uri]["cid"] == orphan.cid and listed[orphan.uri]["value"] == orphan.value
    assert synced.db["kidlisp"].count_documents({"code": orphan.value["code"]}) == 0

    row = synced.rows(synced.first)[(orphan.handle, "kidlisp")]
    assert row["deleted"] == 0 and row["not_in_mongodb"] == 1, row
    # all of jeffrey's pieces (none removed or failing) and the orphan
    assert len(listed) == row["desired"] + 1 == summary.owned_counts[orphan.owner]["kidlisp"] + 1


def test_the_tape_record_the_platform_wrote_is_adopted_as_it_is(synced: SyncedPartition) -> None:
    summary = synced.summary
    [record] = _platform(summary, TAPE)
    [tape] = summary.platform_tapes
    mine = [r for r in synced.listed(record.did, TAPE) if r["value"]["code"] == tape["code"]]
    assert [r["uri"] for r in mine] == [record.uri], "the platform's rkey kept, no second tape record"
    assert mine[0]["cid"] == record.cid  # not rewritten: no zipUrl or thumbnail added, no re-encode
    mp4 = Path(record.blobs["video"]["path"]).read_bytes()
    assert mine[0]["value"]["video"]["ref"]["$link"] == blob_cid(mp4)
    assert mine[0]["value"]["ref"] == tape["_id"]
    # the oven's MP4 was used: the tape's ZIP was never fetched
    assert f"/{USER_BUCKET}/{tape['key']}" not in synced.world.media.requested
    doc = synced.db["tapes"].find_one({"_id": ObjectId(tape["_id"])})
    assert doc["at"]["rkey"] == record.rkey

    row = synced.rows(synced.first)[(record.handle, "tape")]
    assert row["updated"] == 0 and row["deleted"] == 0, row


def test_a_second_full_sync_writes_nothing(synced: SyncedPartition) -> None:
    first = synced.rows(synced.first)
    assert synced.first.returncode == 0, synced.first.stderr[-3000:]
    assert synced.second.returncode == 0, synced.second.stderr[-3000:]
    for key, row in synced.rows(synced.second).items():
        assert (row["created"], row["updated"], row["deleted"]) == (0, 0, 0), row
        assert row["failed"] == first[key]["failed"], row
    assert synced.heads_after_second == synced.heads_before_second  # not one commit


# ---------------------------------------------------------------------------------------------- secrets


def _wip_secrets(synced: SyncedPartition) -> set[str]:
    """The editor's capability hashes and the state-file ids of every planted painting with a `wip`."""
    refs = [*synced.summary.wip_paintings, *synced.summary.sealed_paintings]
    found = set()
    for doc in synced.db["paintings"].find({"_id": {"$in": [ObjectId(ref["_id"]) for ref in refs]}}):
        found.add(doc["wip"]["editorHash"])
        if doc["wip"]["snapshot"] is not None:
            found.add(str(doc["wip"]["snapshot"]))
    assert len(found) == 5 + 4  # five with a `wip`, four of them saved
    return found


def _files(root: Path, skip: set[str]) -> dict[str, bytes]:
    """Every file's bytes (SQLite databases also as their tables' values, decompressed)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        data = found[str(rel)] = path.read_bytes()
        if data.startswith(b"SQLite format 3\x00"):
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                tables = [n for (n,) in db.execute("select name from sqlite_master where type = 'table'")]
                found[f"{rel} (tables)"] = b"\n".join(
                    row_values(db.execute(f'select * from "{table}"')) for table in tables
                )
    return found


def test_the_editors_secrets_reach_no_log_metadata_or_output(synced: SyncedPartition) -> None:
    secrets = _wip_secrets(synced)
    places = _files(synced.dagster_home, skip=set())
    # ACPIPELINE_HOME's logs and caches; not the embedded MongoDB store, which holds the documents
    places |= {f"ACPIPELINE_HOME/{k}": v for k, v in _files(synced.world.home, skip={"mongo"}).items()}
    assert any("(tables)" in where for where in places)  # the run and event storage were read
    for name, result in (("first", synced.first), ("second", synced.second)):
        places[f"{name} sync stdout"] = result.stdout.encode()
        places[f"{name} sync stderr"] = result.stderr.encode()
    hits = [
        (where, secret[:8] + "...")
        for where, data in places.items()
        for secret in secrets
        if secret.encode() in data or secret.upper().encode() in data
    ]
    assert not hits
