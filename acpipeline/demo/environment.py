"""The demo's world on one machine: the reference PDS (local unless `PDS_URL` is set), a media server for
the storage buckets, and the synthetic dataset in the embedded store. Tests use it too."""

from __future__ import annotations

import os
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from acpipeline.core.batches import MAX_BODY_BYTES, MAX_WRITES, encode_body
from acpipeline.demo.dataset import ACCOUNT_WORKERS, DatasetSummary, PlatformRecord, seed_dataset
from acpipeline.demo.media_server import MediaServer
from acpipeline.errors import OperatorError
from acpipeline.localpds.server import LocalPds
from acpipeline.localpds.server import start as start_pds
from acpipeline.resources.pds import PdsClient, PdsError
from acpipeline.settings import acpipeline_home

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

TEMPLATE_ENV = {
    "image_url": "ACPIPELINE_IMAGE_URL",
    "guest_image_url": "ACPIPELINE_GUEST_IMAGE_URL",
    "zip_url": "ACPIPELINE_ZIP_URL",
    "blobs_url": "ACPIPELINE_BLOBS_URL",
}


@dataclass
class DemoEnvironment:
    pds_url: str
    media: MediaServer
    local_pds: LocalPds | None
    stack: ExitStack

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> DemoEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_a_real_database() -> None:
    if os.environ.get("MONGODB_CONNECTION_STRING"):
        raise OperatorError(
            "MONGODB_CONNECTION_STRING is set: the demo only seeds the embedded store, never a real "
            "database. Unset it to run the demo."
        )


def start_environment(
    media_root: Path | None = None,
    log: Callable[[str], None] = print,
    *,
    rate_limits: bool = False,
    rate_limit_bypass_key: str | None = None,
) -> DemoEnvironment:
    """Start (or reach) the PDS and start the media server; export their URLs into this process's
    environment, which is how the Dagster resources and child processes find them. `rate_limits` and
    `rate_limit_bypass_key` go to the local PDS when one is started (`acpipeline.localpds.server.start`)."""
    refuse_a_real_database()
    stack = ExitStack()
    try:
        local = None
        url = os.environ.get("PDS_URL")
        if not url:
            local = start_pds(log=log, rate_limits=rate_limits, rate_limit_bypass_key=rate_limit_bypass_key)
            stack.callback(local.stop)
            url = local.url
            os.environ["PDS_URL"] = url
            os.environ["PDS_ADMIN_PASSWORD"] = local.admin_password
        media = MediaServer(media_root or acpipeline_home() / "media").start()
        stack.callback(media.stop)
        for name, template in media.url_templates().items():
            os.environ[TEMPLATE_ENV[name]] = template
        return DemoEnvironment(url, media, local, stack)
    except BaseException:
        stack.close()
        raise


def create_demo_account(client: PdsClient, handle: str, password: str, email: str) -> str:
    """An account for a demo user; a PDS that refuses the handle's domain (an outside `PDS_URL`) is named
    in one line with what to change."""
    try:
        return client.create_account(handle, password, email)
    except PdsError as exc:
        if exc.error != "UnsupportedDomain":
            raise
        domain = "." + handle.split(".", 1)[1]
        raise OperatorError(
            f"the PDS at {client.url} does not accept handles under {domain}, where the demo creates its "
            "users: unset PDS_URL to use the demo's own PDS, or give that PDS "
            "PDS_SERVICE_HANDLE_DOMAINS=.at.aesthetic.computer,.pds.aesthetic.computer"
        ) from None


def seed(
    pds_url: str,
    media_root: Path,
    db: MongoDatabase,
    size: str = "small",
    seed_value: int = 7,
    log: Callable[[str], None] = print,
) -> DatasetSummary:
    """Create the demo accounts on the PDS and fill the embedded store (replacing earlier demo data:
    a fresh local PDS has none of the old accounts).

    The accounts are created several at a time (ACCOUNT_WORKERS threads share this one client; each
    account's session is saved under ACPIPELINE_HOME/sessions, so the sync that follows does not log in
    again). The platform-size dataset reports its progress to `log` (about a thousand accounts take
    minutes); the small ones say nothing until the summary.

    Then the records the platform's own code wrote (`summary.platform_records`: KidLisp pieces saved in its
    own store, tapes the oven baked) are created as the platform creates them (see write_platform_records),
    before this returns; `summary.elapsed_seconds` includes them."""
    client = PdsClient(pds_url)
    run_tag = secrets.token_hex(3)

    def create_account(handle: str, password: str) -> str:
        return create_demo_account(client, handle, password, f"{handle.split('.')[0]}-{run_tag}@example.com")

    progress = log if size == "platform" else None
    try:
        summary = seed_dataset(
            db,
            Path(media_root),
            create_account,
            size=size,
            seed=seed_value,
            reset=True,
            account_workers=ACCOUNT_WORKERS,
            progress=progress,
        )
        started = time.perf_counter()
        write_platform_records(client, db, summary, progress=progress)
        summary.elapsed_seconds = round(summary.elapsed_seconds + time.perf_counter() - started, 3)
        return summary
    finally:
        client.close()


def write_platform_records(
    client: PdsClient,
    db: MongoDatabase,
    summary: DatasetSummary,
    workers: int = ACCOUNT_WORKERS,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Create `summary.platform_records` on the PDS as the platform's code does: its blobs uploaded, then
    `applyWrites` creates without an rkey (the PDS assigns a TID, as the platform's `createRecord` without
    one does), at most MAX_WRITES and MAX_BODY_BYTES a call, one account per thread (`workers` at once).
    Each record's `uri` and `cid` are filled in; a record with a `link` (a tape) gets it in its MongoDB
    document, `{rkey, uri, cid}` under that field (`at`), as `tape-atproto.mjs` sets it. Returns how many.

    The accounts' sessions were saved when they were created, so this logs in to none of them."""
    by_did: dict[str, list[PlatformRecord]] = defaultdict(list)
    for record in summary.platform_records:
        if record.did is None:
            raise ValueError(f"the platform record's account {record.handle} has no DID")
        by_did[record.did].append(record)
    if not by_did:
        return 0
    passwords = {user.did: user.password for user in summary.users if user.did}
    if progress and len(summary.platform_records) >= 100:
        progress(
            f"writing {len(summary.platform_records)} records the platform wrote itself, in "
            f"{len(by_did)} accounts ..."
        )

    def write(did: str) -> None:
        password = passwords[did]
        if password is None:
            raise ValueError(f"no password for {did}")
        session = client.session(did, password)
        records = by_did[did]
        values: list[dict[str, Any]] = []
        for record in records:
            value = dict(record.value)
            for name, blob in record.blobs.items():
                data = Path(blob["path"]).read_bytes()
                value[name] = client.upload_blob(session, data, blob["mime_type"])
            values.append(value)
        for start, end in _batches(values):
            writes = [
                {"$type": "com.atproto.repo.applyWrites#create", "collection": r.collection, "value": v}
                for r, v in zip(records[start:end], values[start:end], strict=True)
            ]
            answer = client.apply_writes(session, encode_body({"repo": did, "writes": writes}))
            for record, result in zip(records[start:end], answer["results"], strict=True):
                record.uri, record.cid = result["uri"], result["cid"]

    with ThreadPoolExecutor(max(1, min(workers, len(by_did))), thread_name_prefix="platform-records") as pool:
        for future in [pool.submit(write, did) for did in by_did]:
            future.result()
    for record in summary.platform_records:  # MongoDB from this thread only, once the PDS has answered
        if record.link and record.source and record.ref:
            link = {"rkey": record.rkey, "uri": record.uri, "cid": record.cid}
            db[record.source].update_one({"_id": ObjectId(record.ref)}, {"$set": {record.link: link}})
    return len(summary.platform_records)


def _batches(values: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) of consecutive slices within MAX_WRITES writes and MAX_BODY_BYTES a body."""
    slices: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, value in enumerate(values):
        op = len(encode_body(value)) + 120  # the op's envelope: its type and collection
        if i > start and (i - start >= MAX_WRITES or size + op > MAX_BODY_BYTES):
            slices.append((start, i))
            start, size = i, 0
        size += op
    slices.append((start, len(values)))
    return slices
