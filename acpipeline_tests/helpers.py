"""Shared test helpers: run partitions through Dagster, read the PDS independently, insert documents."""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from acpipeline.sync.runner import PartitionResult, run_partitions

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def sync(
    world, handles=None, media=None, dry_run=False, strict=False, full=True
) -> dict[tuple[str, str], PartitionResult]:
    """Through Dagster; `full` by default, so every partition really runs (the quick path has its tests)."""
    results, _ = run_partitions(
        world.defs(), world.instance, handles, media, dry_run=dry_run, strict=strict, full=full
    )
    return {(r.handle, r.media): r for r in results}


def head(world, did: str) -> str:
    """The repo's latest commit rev, read from the PDS: it changes with every applied write."""
    return world.client.call("GET", "com.atproto.sync.getLatestCommit", params={"did": did})["rev"]


def row_values(rows: Iterable[Sequence[Any]]) -> bytes:
    """Every value of the rows as bytes, with what Dagster stores zlib-compressed (run and plan snapshots)
    decompressed: the secrets scans read databases through this, since no grep of the files sees inside."""
    values = []
    for row in rows:
        for value in row:
            if isinstance(value, memoryview | bytes):
                value = bytes(value)
                with contextlib.suppress(zlib.error):
                    value = zlib.decompress(value)
                values.append(value)
            elif value is not None:
                values.append(str(value).encode())
    return b"\n".join(values)


def records(world, did: str, nsid: str) -> list[dict[str, Any]]:
    return world.client.list_records(did, nsid)


def add_user(world, db, name: str) -> tuple[str, str, str]:
    """A MongoDB user with a fresh PDS account; returns (sub, handle, did)."""
    handle, did, password = world.new_account(name)
    sub = f"auth0|{name}{ObjectId()}"
    db["users"].insert_one(
        {"_id": sub, "code": name[:4], "atproto": {"did": did, "handle": handle, "password": password}}
    )
    return sub, handle, did


def add_moods(db, sub: str, texts: list[str], **extra) -> list[ObjectId]:
    docs = [
        {"_id": ObjectId(), "user": sub, "mood": text, "when": T0 + timedelta(seconds=i), **extra}
        for i, text in enumerate(texts)
    ]
    db["moods"].insert_many(docs)
    return [d["_id"] for d in docs]


def add_pieces(db, sub: str | None, slugs: list[str]) -> list[ObjectId]:
    docs = [
        {
            "_id": ObjectId(),
            "slug": slug,
            "code": slug[:4],
            "when": T0.replace(minute=i),
            "bucket": "user-aesthetic-computer" if sub else "art-aesthetic-computer",
            **({"user": sub} if sub else {}),
        }
        for i, slug in enumerate(slugs)
    ]
    db["pieces"].insert_many(docs)
    return [d["_id"] for d in docs]


OTHER = "com.example.other"


def create_other_record(world, db, sub: str, did: str) -> str:
    """A write to the account outside acpipeline (another tool, another collection); returns its URI."""
    return write_as_another_tool(world, did, db["users"].find_one({"_id": sub})["atproto"]["password"])


def write_as_another_tool(world, did: str, password: str) -> str:
    """`create_other_record` without MongoDB: from any thread (the embedded store's connections are bound
    to the thread that made them)."""
    session = world.client.session(did, password)
    body = json.dumps({"repo": did, "collection": OTHER, "record": {"$type": OTHER, "text": "keep me"}})
    created = world.client.call("POST", "com.atproto.repo.createRecord", body=body.encode(), session=session)
    return created["uri"]
