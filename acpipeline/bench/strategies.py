"""The two reference writers the benchmark compares the pipeline with, on the same records and blobs.

- `write_ceiling`: the thinnest possible client: one login, uploadBlob for each thumbnail, then
  applyWrites of up to 200 records (and under the body limit): the PDS's own limit on this machine. One
  request at a time: over a network it pays every round trip, so `uploads_at_once` > 1 gives the ceiling
  of a client that hides them: that many uploads at a time, a batch's uploads while the one before commits
  (the PDS commits one batch of an account at a time either way).
- `write_platform_style`: what the platform's sync does: for every record a fresh login (createSession)
  and a createRecord (after its uploadBlob for paintings), 10 records at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from acpipeline.core.batches import batch_writes, encode_body, write_op
from acpipeline.core.plan import Write

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class PreparedRecord:
    """A record value with `$type`, and the (bytes, mime type) of every blob it references."""

    collection: str
    rkey: str
    value: dict[str, Any]
    blobs: tuple[tuple[bytes, str], ...] = ()


def _ok(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.url.path}: HTTP {response.status_code} {response.text[:300]}")
    return response


def _login(http: httpx.Client, identifier: str, password: str) -> str:
    body = {"identifier": identifier, "password": password}
    token: str = _ok(http.post("/xrpc/com.atproto.server.createSession", json=body)).json()["accessJwt"]
    return token


def _upload_blobs(http: httpx.Client, auth: dict[str, str], record: PreparedRecord) -> None:
    for data, mime in record.blobs:
        headers = {**auth, "Content-Type": mime}
        try:
            response = http.post("/xrpc/com.atproto.repo.uploadBlob", content=data, headers=headers)
        except httpx.TransportError:  # a dropped connection (seen once under 32 at a time): a blob is
            # stored by its content, so sending it again cannot store it twice
            response = http.post("/xrpc/com.atproto.repo.uploadBlob", content=data, headers=headers)
        _ok(response)


def _batches(records: list[PreparedRecord]) -> Iterator[tuple[str, list[PreparedRecord]]]:
    """(collection, records) of every applyWrites: up to 200 records (and under the body limit)."""
    by_collection: dict[str, dict[str, PreparedRecord]] = {}
    for record in records:
        by_collection.setdefault(record.collection, {})[record.rkey] = record
    for collection, by_rkey in by_collection.items():
        writes = [Write("create", r.rkey, "", None, r.value) for r in by_rkey.values()]
        for batch in batch_writes(collection, writes):
            yield collection, [by_rkey[w.rkey] for w in batch]


def _apply_writes(
    http: httpx.Client, auth: dict[str, str], did: str, collection: str, batch: list[PreparedRecord]
) -> None:
    ops = [write_op(collection, Write("create", r.rkey, "", None, r.value)) for r in batch]
    body = encode_body({"repo": did, "writes": ops})
    _ok(http.post("/xrpc/com.atproto.repo.applyWrites", content=body, headers={**auth, **JSON}))


def write_records(
    http: httpx.Client, did: str, access: str, records: list[PreparedRecord], uploads_at_once: int = 1
) -> None:
    """The thinnest client's writes with a session made before: uploadBlob of every blob, then applyWrites
    of up to 200 records (and under the body limit) per collection; with `uploads_at_once` > 1, that many
    uploads at a time, each batch's while the batch before commits."""
    auth = {"Authorization": f"Bearer {access}"}
    if uploads_at_once == 1:
        for record in records:
            _upload_blobs(http, auth, record)
        for collection, batch in _batches(records):
            _apply_writes(http, auth, did, collection, batch)
        return
    with ThreadPoolExecutor(uploads_at_once) as uploads, ThreadPoolExecutor(1) as commits:
        committing: Future[None] | None = None
        for collection, batch in _batches(records):
            list(uploads.map(lambda record: _upload_blobs(http, auth, record), batch))
            if committing is not None:
                committing.result()
            committing = commits.submit(_apply_writes, http, auth, did, collection, batch)
        if committing is not None:
            committing.result()


def write_ceiling(
    pds_url: str, did: str, password: str, records: list[PreparedRecord], uploads_at_once: int = 1
) -> float:
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=max(uploads_at_once + 1, 10))
    with httpx.Client(base_url=pds_url, timeout=120, limits=limits) as http:
        write_records(http, did, _login(http, did, password), records, uploads_at_once)
    return time.perf_counter() - started


def write_platform_style(pds_url: str, did: str, password: str, records: list[PreparedRecord]) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=pds_url, timeout=120, limits=httpx.Limits(max_connections=10)) as http:

        def one(record: PreparedRecord) -> None:
            auth = {"Authorization": f"Bearer {_login(http, did, password)}"}
            _upload_blobs(http, auth, record)

            body = json.dumps({"repo": did, "collection": record.collection, "record": record.value})
            _ok(
                http.post(
                    "/xrpc/com.atproto.repo.createRecord",
                    content=body.encode(),
                    headers={**auth, "Content-Type": "application/json"},
                )
            )

        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(one, records))
    return time.perf_counter() - started
