"""The builder: the dataset's documents drawn from one random stream, with the media files they point at
(written at once, or described as jobs for worker processes) and the users whose accounts are created
meanwhile."""

from __future__ import annotations

import hashlib
import random
import string
import struct
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from acpipeline.demo.dataset.accounts import ACCOUNT_WORKERS, AccountCreation
from acpipeline.demo.dataset.media_files import build_recording_zip, make_painting, write_png
from acpipeline.demo.dataset.media_jobs import OvenJob, PaintingJob, RecordingJob, TapeJob
from acpipeline.demo.dataset.model import (
    ART_BUCKET,
    ART_GUEST_HANDLE,
    ART_GUEST_SUB,
    COLLECTIONS,
    EPOCH_END,
    EPOCH_START,
    USER_BUCKET,
    CreateAccount,
    DemoUser,
    PlatformRecord,
    painting_key,
    recording_slug,
    zip_key,
)
from acpipeline.settings import DEFAULT_BLOBS_URL

_ALNUM = string.ascii_letters + string.digits
_CODE_ALPHABET = string.ascii_lowercase + string.digits


class Builder:
    def __init__(
        self,
        media_root: Path,
        create_account: CreateAccount,
        seed: int,
        *,
        defer_media: bool = False,
        account_workers: int = ACCOUNT_WORKERS,
        progress: Callable[[str], None] | None = None,
        blobs_url: str = DEFAULT_BLOBS_URL,
    ) -> None:
        self.rng = random.Random(seed)
        self.media_root = media_root
        self.docs: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
        self.codes: dict[str, set[str]] = {name: set() for name in COLLECTIONS}
        self.slugs: set[str] = set()
        self.whens: set[datetime] = set()
        self.users: list[DemoUser] = []
        self.pds_handles: dict[str, str | None] = {}  # sub -> PDS handle (None: no account)
        self.recordings = 0
        self.tape_jobs: list[TapeJob] = []
        # With defer_media, paintings and recordings are drawn later from a seed of their own (in worker
        # processes); without it, at once from the builder's random stream (the small and bench datasets).
        self.defer_media = defer_media
        self.media_jobs: list[PaintingJob | RecordingJob] = []
        self.failing: set[ObjectId] = set()  # documents whose media is missing or broken on purpose
        self.extra: dict[str, Any] = {}
        self.blobs_url = blobs_url  # the oven's bucket ({key}): where tape documents' `mp4Url` point
        self.oven_jobs: list[OvenJob] = []  # after the tape ZIPs: they read them
        self.platform_records: list[PlatformRecord] = []
        self.shapes: dict[str, list[dict[str, Any]]] = {
            "wip_paintings": [],
            "sealed_paintings": [],
            "kidlisp_projection_rows": [],
            "platform_tapes": [],
            "orphan_kidlisp_records": [],
        }
        self.progress = progress
        self.accounts = AccountCreation(create_account, account_workers, self.say)
        self._say_lock = threading.Lock()

    # -- primitives
    def when(self, start: datetime = EPOCH_START, end: datetime = EPOCH_END) -> datetime:
        """A random ms-precision datetime, unique across the dataset (slugs are derived from it)."""
        span_ms = int((end - start).total_seconds() * 1000)
        while True:
            value = start + timedelta(milliseconds=self.rng.randrange(span_ms))
            if value not in self.whens:
                self.whens.add(value)
                return value

    def object_id(self, when: datetime) -> ObjectId:
        seconds = int(when.replace(tzinfo=UTC).timestamp())
        return ObjectId(struct.pack(">I", seconds) + self.rng.randbytes(8))

    def code(self, collection: str) -> str:
        taken = self.codes[collection]
        while True:
            value = "".join(self.rng.choices(_CODE_ALPHABET, k=self.rng.randint(3, 5)))
            if value not in taken and not value.isdigit():
                taken.add(value)
                return value

    def random_slug(self) -> str:
        while True:
            value = "".join(self.rng.choices(_ALNUM, k=8))
            if value not in self.slugs:
                self.slugs.add(value)
                return value

    @staticmethod
    def timestamp_slug(when: datetime) -> str:
        return (
            f"{when.year}.{when.month}.{when.day}.{when.hour}.{when.minute:02d}.{when.second:02d}."
            f"{when.microsecond // 1000:03d}"
        )

    def path(self, bucket: str, key: str) -> Path:
        return self.media_root / bucket / key

    def ref(self, collection: str, doc: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        out = {"collection": collection, "_id": str(doc["_id"]), "user": doc.get("user")}
        for name in ("slug", "code", "bucket"):
            if name in doc:
                out[name] = doc[name]
        if key:
            out["key"] = key
        return out

    # -- users
    def sub(self, prefix: str = "auth0|") -> str:
        return prefix + self.rng.randbytes(12).hex()

    def add_user(
        self, ac_handle: str | None, pds_handle: str | None, *, sub: str | None = None, flat: bool = False
    ) -> DemoUser:
        sub = sub or self.sub()
        doc: dict[str, Any] = {"_id": sub, "code": self.code("users")}
        password = None
        if pds_handle:
            password = self.accounts.submit(len(self.users), doc, pds_handle, flat)
        self.docs["users"].append(doc)
        self.pds_handles[sub] = pds_handle
        if ac_handle:
            self.docs["@handles"].append({"_id": sub, "handle": ac_handle})
        # The DID is filled in by finish_accounts, once the PDS has answered.
        user = DemoUser(sub=sub, ac_handle=ac_handle, pds_handle=pds_handle, password=password)
        self.users.append(user)
        return user

    def say(self, message: str) -> None:
        if self.progress:
            with self._say_lock:  # account threads report too: one line at a time
                self.progress(message)

    def finish_accounts(self) -> None:
        """Wait for every account (AccountCreation.finish), then give the users the summary and the platform
        records refer to their DIDs."""
        self.accounts.finish(self.users)
        by_sub = {user.sub: user for user in self.users}
        for key, value in self.extra.items():
            if isinstance(value, DemoUser):
                self.extra[key] = by_sub[value.sub]
        for record in self.platform_records:
            record.did = by_sub[record.owner].did

    def media_count(self) -> dict[str, int]:
        paintings = sum(isinstance(job, PaintingJob) for job in self.media_jobs)
        return {
            "paintings": paintings,
            "recordings": len(self.media_jobs) - paintings,
            "tapes": len(self.tape_jobs),
        }

    def add_art_guest(self) -> DemoUser:
        return self.add_user(None, ART_GUEST_HANDLE, sub=ART_GUEST_SUB)

    # -- media documents
    def add_painting(
        self,
        user: str | None,
        size: tuple[int, int],
        *,
        recording: bool = False,
        nuked: bool = False,
        write_image: bool = True,
        noisy: bool = False,
        null_user: bool = False,
        when: datetime | None = None,
    ) -> dict[str, Any]:
        when = when or self.when()
        bucket = USER_BUCKET if user else ART_BUCKET
        if user:
            slug = self.timestamp_slug(when)
        else:
            slug = self.random_slug()
            if recording:
                slug = f"{slug}:{self.random_slug()}"
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("paintings"),
            "slug": slug,
            "when": when,
            "bucket": bucket,
        }
        if user:
            doc["user"] = user
        elif null_user:
            doc["user"] = None
        if nuked:
            doc["nuked"] = True
        self.docs["paintings"].append(doc)
        width, height = size
        if write_image:
            target = self.path(bucket, painting_key(slug, user))
            if self.defer_media:
                self.media_jobs.append(PaintingJob(target, width, height, noisy, self.rng.randrange(2**32)))
            else:
                write_png(target, make_painting(width, height, self.rng, noisy=noisy))
        else:
            self.failing.add(doc["_id"])
        if recording:
            target = self.path(bucket, zip_key(recording_slug(slug), user))
            rec_width, rec_height, steps = min(width, 128), min(height, 128), self.rng.randint(2, 5)
            if self.defer_media:
                self.media_jobs.append(
                    RecordingJob(target, rec_width, rec_height, steps, self.rng.randrange(2**32), when)
                )
            else:
                build_recording_zip(target, rec_width, rec_height, steps, self.rng, when)
            self.recordings += 1
        return doc

    def add_mood(
        self, user: str, text: str, *, deleted: bool = False, when: datetime | None = None
    ) -> dict[str, Any]:
        when = when or self.when()
        doc: dict[str, Any] = {"_id": self.object_id(when), "user": user, "mood": text, "when": when}
        if deleted:
            doc["deleted"] = True
        self.docs["moods"].append(doc)
        return doc

    def add_piece(self, user: str | None, slug: str, *, nuked: bool = False) -> dict[str, Any]:
        when = self.when()
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("pieces"),
            "slug": slug,
            "when": when,
            "bucket": USER_BUCKET if user else ART_BUCKET,
        }
        if user:
            doc["user"] = user
        if nuked:
            doc["nuked"] = True
        self.docs["pieces"].append(doc)
        return doc

    def add_kidlisp(self, user: str | None, source: str, *, null_user: bool = False) -> dict[str, Any]:
        when = self.when()
        accessed = when + timedelta(milliseconds=self.rng.randrange(1, 90 * 86_400_000))
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("kidlisp"),
            "source": source,
            "hash": hashlib.sha256(source.encode()).hexdigest(),
            "when": when,
            "hits": self.rng.randint(0, 500),
            "lastAccessed": accessed,
        }
        if user:
            doc["user"] = user
        elif null_user:
            doc["user"] = None
        self.docs["kidlisp"].append(doc)
        return doc

    def add_news(
        self,
        user: str | None,
        title: str,
        *,
        text: str | None = None,
        url: str | None = None,
        dead: bool = False,
        from_bluesky: bool = False,
    ) -> dict[str, Any]:
        """A news post as the platform's news-api stores it; `from_bluesky`: a post its Bluesky ingest
        copied in (no `user`, an `external` source, `atproto` pointing at the original app.bsky post)."""
        when = self.when()
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": ("n" if from_bluesky else "") + self.code("news-posts"),
            "title": title,
            "user": user,
            "when": when,
            "updated": when,
            "score": self.rng.randint(1, 40),
            "commentCount": self.rng.randint(0, 6),
            "status": "dead" if dead else "live",
        }
        if text is not None:
            doc["text"] = text
        if url is not None:
            doc["url"] = url
        if from_bluesky:
            did, rkey = "did:plc:artistnewsnetwork00000000", self.random_slug().lower()
            uri = f"at://{did}/app.bsky.feed.post/{rkey}"
            doc["external"] = {"source": "bsky", "did": did, "postUri": uri, "postedAt": when}
            doc["atproto"] = {"did": did, "uri": uri, "rkey": rkey}
        self.docs["news-posts"].append(doc)
        return doc

    def add_tape(
        self,
        user: str | None,
        size: tuple[int, int],
        frames: int,
        *,
        fps: int = 30,
        soundtrack: bool = False,
        nuked: bool = False,
        zip_state: str = "ok",
        when: datetime | None = None,
    ) -> dict[str, Any]:
        """zip_state: "ok", "missing" (no file) or "broken" (truncated file)."""
        when = when or self.when()
        slug = self.random_slug()
        bucket = USER_BUCKET if user else ART_BUCKET
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("tapes"),
            "slug": slug,
            "when": when,
            "bucket": bucket,
            "nuked": nuked,
        }
        if user:
            doc["user"] = user
        if self.rng.random() < 0.3:
            doc["mp4Status"] = "pending"
        self.docs["tapes"].append(doc)
        target = self.path(bucket, zip_key(slug, user))
        job = TapeJob(target, size[0], size[1], frames, fps, soundtrack, self.rng.randrange(2**32), when)
        if zip_state == "ok":
            self.tape_jobs.append(job)
            return doc
        self.failing.add(doc["_id"])
        if zip_state == "broken":
            job.run()
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 3])
        return doc

    def painting_size(self) -> tuple[int, int]:
        return self.rng.choice(
            [
                (32, 32),
                (64, 48),
                (128, 128),
                (100, 100),
                (160, 120),
                (256, 256),
                (300, 200),
                (400, 300),
                (512, 512),
                (640, 480),
                (800, 600),
                (1024, 768),
            ]
        )

    def tape_size(self) -> tuple[int, int]:
        return self.rng.choice([(128, 128), (160, 120), (192, 144), (200, 200), (256, 192), (320, 240)])
