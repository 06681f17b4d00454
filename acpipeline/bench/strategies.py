"""The two reference writers the benchmark compares the pipeline with, on the same records and blobs.

- `write_ceiling`: the thinnest possible client: one login, uploadBlob for each thumbnail, then
  applyWrites of up to 200 records (and under the body limit): the PDS's own limit on this machine.
- `write_platform_style`: what the platform's sync does: for every record a fresh login (createSession)
  and a createRecord (after its uploadBlob for paintings), 10 records at a time.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from acpipeline.core.batches import batch_writes, encode_body, write_op
from acpipeline.core.plan import Write


@dataclass(frozen=True)
class PreparedRecord:
    """A record value with `$type`, and the (bytes, mime type) of every blob it references."""

    collection: str
    rkey: str
    value: dict
    blobs: tuple[tuple[bytes, str], ...] = ()


def _ok(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.url.path}: HTTP {response.status_code} {response.text[:300]}")
    return response


def _login(http: httpx.Client, identifier: str, password: str) -> str:
    body = {"identifier": identifier, "password": password}
    return _ok(http.post("/xrpc/com.atproto.server.createSession", json=body)).json()["accessJwt"]


def _upload_blobs(http: httpx.Client, auth: dict[str, str], record: PreparedRecord) -> None:
    for data, mime in record.blobs:
        headers = {**auth, "Content-Type": mime}
        _ok(http.post("/xrpc/com.atproto.repo.uploadBlob", content=data, headers=headers))


def write_records(http: httpx.Client, did: str, access: str, records: list[PreparedRecord]) -> None:
    """The thinnest client's writes with a session made before: uploadBlob of every blob, then applyWrites
    of up to 200 records (and under the body limit) per collection."""
    auth = {"Authorization": f"Bearer {access}"}
    for record in records:
        _upload_blobs(http, auth, record)
    by_collection: dict[str, list[Write]] = {}
    for record in records:
        by_collection.setdefault(record.collection, []).append(
            Write("create", record.rkey, "", None, record.value)
        )
    for collection, writes in by_collection.items():
        for batch in batch_writes(collection, writes):
            body = encode_body({"repo": did, "writes": [write_op(collection, w) for w in batch]})
            headers = {**auth, "Content-Type": "application/json"}
            _ok(http.post("/xrpc/com.atproto.repo.applyWrites", content=body, headers=headers))


def write_ceiling(pds_url: str, did: str, password: str, records: list[PreparedRecord]) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=pds_url, timeout=120) as http:
        write_records(http, did, _login(http, did, password), records)
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
