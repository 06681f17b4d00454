"""The entry point: fill a database and a media folder with one of the datasets."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from acpipeline.demo import SIZES  # defined there: the command line reads it without this package
from acpipeline.demo.dataset.accounts import ACCOUNT_WORKERS
from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.media_jobs import run_media_jobs
from acpipeline.demo.dataset.model import (
    ART_BUCKET,
    COLLECTIONS,
    USER_BUCKET,
    CreateAccount,
    DatasetExists,
    DatasetSummary,
)
from acpipeline.demo.dataset.platform import platform_dataset
from acpipeline.demo.dataset.recipes import bench_dataset, small_dataset
from acpipeline.demo.dataset.summarise import summarise
from acpipeline.demo.media_server import BLOBS_BUCKET
from acpipeline.settings import DEFAULT_BLOBS_URL

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

BLOBS_URL_ENV = "ACPIPELINE_BLOBS_URL"  # where the sync finds the oven's bucket (the demo's media server)

_SCENARIOS = {"small": small_dataset, "bench": bench_dataset, "platform": platform_dataset}
assert tuple(_SCENARIOS) == SIZES, "acpipeline.demo.SIZES names every scenario"


def seed_dataset(
    db: MongoDatabase,
    media_root: Path,
    create_account: CreateAccount,
    size: str = "small",
    seed: int = 7,
    *,
    reset: bool = False,
    account_workers: int = ACCOUNT_WORKERS,
    media_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    blobs_url: str | None = None,
) -> DatasetSummary:
    """Fill `db` (a pymongo-API Database) and `media_root` with a synthetic Aesthetic Computer dataset.

    `size` is "small" (every edge case, a few of each), "bench" (the heavy user's real counts plus 32
    anonymous tapes) or "platform" (the platform's real scale: 4,201 users, 978 accounts, the heavy user,
    the anonymous work, every edge case of small). Refuses a database that already has users unless `reset`
    (which drops the seven collections and the two bucket folders under `media_root` first).

    `create_account` is called from `account_workers` threads at once (it must be thread-safe); media files
    are written by up to `media_workers` processes (default: the cores, at most MEDIA_WORKERS). The user
    documents are inserted last, once every account exists: a failure leaves no users behind (and drops
    what this call inserted), so the next call does not need `reset`. `progress` receives a line per
    phase (and per 100 accounts).

    `blobs_url` is the oven's bucket (a template with {key}) that baked tapes' `mp4Url` point into: default
    ACPIPELINE_BLOBS_URL (the demo's media server), else production's. The records the platform wrote
    itself are not created here (this package knows no PDS client): the summary's `platform_records` lists
    them, for `acpipeline.demo.environment.write_platform_records`.
    """
    if size not in _SCENARIOS:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    started = time.perf_counter()
    if db["users"].find_one({}, {"_id": 1}) is not None:
        if not reset:
            raise DatasetExists("the database already has users; pass reset=True to replace the demo data")
        for name in COLLECTIONS:
            db.drop_collection(name)
        for bucket in (USER_BUCKET, ART_BUCKET, BLOBS_BUCKET):
            shutil.rmtree(Path(media_root) / bucket, ignore_errors=True)
    media_root = Path(media_root)
    media_root.mkdir(parents=True, exist_ok=True)
    builder = Builder(
        media_root,
        create_account,
        seed,
        defer_media=size == "platform",
        account_workers=account_workers,
        progress=progress,
        blobs_url=blobs_url or os.environ.get(BLOBS_URL_ENV) or DEFAULT_BLOBS_URL,
    )
    inserted: list[str] = []
    try:
        _SCENARIOS[size](builder)
        _write_media(builder, media_workers)
        for name in COLLECTIONS:  # the users last: they need their DIDs
            if name != "users" and builder.docs[name]:
                inserted.append(name)
                db[name].insert_many(builder.docs[name])
        if builder.accounts.pending >= 100:
            builder.say("waiting for the last accounts ...")
        builder.finish_accounts()
        inserted.append("users")
        db["users"].insert_many(builder.docs["users"])
    except BaseException:
        builder.accounts.close()
        for name in inserted:
            db.drop_collection(name)
        raise
    return summarise(builder, size, seed, time.perf_counter() - started)


def _write_media(builder: Builder, workers: int | None) -> None:
    """The media files described as jobs, then the oven's MP4s (they read the tapes' ZIPs)."""
    media = builder.media_count()
    if sum(media.values()) >= 100:
        builder.say(
            f"writing {media['paintings']} paintings, {media['recordings']} recordings and "
            f"{media['tapes']} tapes ..."
        )
    run_media_jobs([*builder.tape_jobs, *builder.media_jobs], workers)
    for job in builder.oven_jobs:
        job.run()
