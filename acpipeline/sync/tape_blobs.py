"""A tape's blobs: the MP4 and poster frame the platform's oven baked, else encoded here from the tape's
ZIP of frames (or a native recording's MP4, remuxed or transcoded), each checked and cached by content."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acpipeline.core.items import Blob, Derived, Item, ItemProblem
from acpipeline.core.media import TAPE
from acpipeline.core.media.tape import OVEN_COMPLETE
from acpipeline.core.mp4 import H264_ENTRIES, check_jpeg, check_mp4, mp4_facts
from acpipeline.core.tape_video.encode import (
    VIDEO_MIME,
    check_decodes,
    encode_tape,
    remux_faststart,
    transcode_mp4,
)
from acpipeline.core.tape_video.limits import TapeError
from acpipeline.core.tape_video.poster import THUMBNAIL_MIME, zip_thumbnail
from acpipeline.core.tape_video.zip_reading import tape_content_key
from acpipeline.resources.storage import StorageResource, StorageUnavailable
from acpipeline.sync.cache import DerivedCache

if TYPE_CHECKING:
    from acpipeline.sync.blobs import BlobStats

TAPE_VERSION = "tape-v1"
MADE_VERSION = "made-v1"  # verdicts on the MP4s and JPEGs the platform made: bump when their checks change
LEXICON_THUMBNAIL_MAX = 1_048_576
# An oven poster frame refused or missing may be (re)uploaded: look again daily.
THUMBNAIL_RECHECK_S = 24 * 3600


def derive_tape(
    item: Item, storage: StorageResource, cache: DerivedCache, stats: BlobStats, max_video: int, threads: int
) -> Derived:
    """The tape's video and poster frame: the oven's MP4 when it is there and sound, else our encode of the
    ZIP; an ac-native tape's own MP4. `stats.tapes` says which source each tape used, and why."""
    if item.data["native"]:
        return _native_tape(item, storage, cache, stats, max_video, threads)
    fallback = _why_not_oven(item)
    if fallback is None:
        try:
            video, cached = _made_video(
                storage.storage_url(item.data["mp4_url"], "mp4Url"), storage, cache, max_video
            )
        except StorageUnavailable:
            raise  # the oven's MP4 may well be sound: no encode that the next run would replace
        except (ItemProblem, TapeError) as problem:
            fallback = f"oven MP4 refused: {problem}"
        else:
            thumbnail, thumbnail_source = _oven_thumbnail(item, storage, cache, max_video)
            blobs = {"video": video} | ({"thumbnail": thumbnail} if thumbnail else {})
            stats.count(blobs, cached)
            stats.tapes.append(
                {"ref": item.ref, "source": "oven", "thumbnail": thumbnail_source, "cached": cached}
            )
            return Derived(blobs=blobs)
    return _zip_tape(item, storage, cache, stats, max_video, threads, fallback)


def _why_not_oven(item: Item) -> str | None:
    """Why the oven's MP4 is not there to use (None: the document says it is)."""
    status = item.data["mp4_status"]
    if status != OVEN_COMPLETE:
        return f"mp4Status is {status!r}" if status else "not baked (no mp4Status)"
    return None if item.data["mp4_url"] else "mp4Status is complete but mp4Url is missing"


def _zip_tape(
    item: Item,
    storage: StorageResource,
    cache: DerivedCache,
    stats: BlobStats,
    max_video: int,
    threads: int,
    fallback: str,
) -> Derived:
    """Our encode of the tape's ZIP, cached by the ZIP's URL and by its content."""
    zip_url = storage.url_of(TAPE.zip_file(item))
    report: dict[str, Any] = {"ref": item.ref, "source": "zip", "fallback": fallback}
    entry = _earlier_encode(cache, zip_url, max_video)
    if entry:
        video, thumbnail = cache.blob(entry["video"]), cache.blob(entry["thumbnail"])
        if video and thumbnail:
            stats.count({"video": video, "thumbnail": thumbnail}, cached=True)
            stats.tapes.append(report | {"cached": True})
            return Derived(blobs={"video": video, "thumbnail": thumbnail})
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as work:
        zip_path = Path(work) / "tape.zip"
        storage.fetch_to_file(zip_url, zip_path)
        sha = tape_content_key(zip_path)
        entry = cache.get(f"{TAPE_VERSION}:zip:{sha}:{max_video}")
        video = thumbnail = None
        if entry:
            video, thumbnail = cache.blob(entry["video"]), cache.blob(entry["thumbnail"])
        cached = bool(video and thumbnail)
        if not (video and thumbnail):
            encoded = encode_tape(zip_path, max_bytes=max_video, threads=threads)
            video = cache.store_blob(encoded.mp4, VIDEO_MIME)
            thumbnail = cache.store_blob(encoded.thumbnail_jpeg, THUMBNAIL_MIME)
            report |= {
                "duration_s": round(encoded.duration_s, 3),
                "fps": encoded.fps,
                "frames": encoded.frames,
                "size": f"{encoded.width}x{encoded.height}",
                "mp4_bytes": video.size,
                "encode_s": round(encoded.encode_s, 3),
            }
            entry = {"video": video.__dict__, "thumbnail": thumbnail.__dict__}
            cache.put(f"{TAPE_VERSION}:zip:{sha}:{max_video}", entry)
    cache.put(f"{TAPE_VERSION}:url:{zip_url}:{max_video}", {"zip_sha256": sha})
    stats.count({"video": video, "thumbnail": thumbnail}, cached)
    stats.tapes.append(report | {"cached": cached})
    return Derived(blobs={"video": video, "thumbnail": thumbnail})


def _earlier_encode(cache: DerivedCache, zip_url: str, max_video: int) -> dict[str, Any] | None:
    """Our encode of the ZIP at `zip_url` from an earlier run, found by the URL, then by the ZIP's content."""
    by_url = cache.get(f"{TAPE_VERSION}:url:{zip_url}:{max_video}")
    return cache.get(f"{TAPE_VERSION}:zip:{by_url['zip_sha256']}:{max_video}") if by_url else None


def _made_video(url: str, storage: StorageResource, cache: DerivedCache, max_video: int) -> tuple[Blob, bool]:
    """An MP4 the platform made, as a blob byte for byte (so its CID is the platform's), when it is sound;
    raises TapeError naming what is wrong. The verdict is cached by URL and content: a later sync neither
    fetches nor checks it again. Returns the blob and whether it came from the cache."""
    by_url = cache.get(f"{MADE_VERSION}:url:{url}:{max_video}")
    verdict = by_url and cache.get(f"{MADE_VERSION}:mp4:{by_url['sha256']}:{max_video}")
    if verdict and "refused" in verdict:
        raise TapeError(verdict["refused"])
    video = cache.blob(verdict and verdict["video"])
    if video:
        return video, True
    data = storage.fetch(url, max_bytes=max_video)
    sha = hashlib.sha256(data).hexdigest()
    try:
        check_mp4(data, max_video)
        with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as work:
            path = Path(work) / "made.mp4"
            path.write_bytes(data)
            check_decodes(path)
    except TapeError as problem:
        verdict = {"refused": problem.reason}
    else:
        video = cache.store_blob(data, VIDEO_MIME)
        verdict = {"video": video.__dict__}
    cache.put(f"{MADE_VERSION}:mp4:{sha}:{max_video}", verdict)
    cache.put(f"{MADE_VERSION}:url:{url}:{max_video}", {"sha256": sha})
    if video is None:
        raise TapeError(verdict["refused"])
    return video, False


def _oven_thumbnail(
    item: Item, storage: StorageResource, cache: DerivedCache, max_video: int
) -> tuple[Blob | None, str]:
    """The oven's poster frame (or the document's `thumbnailUrl`) when it is a sound JPEG within the
    lexicon's limit; else ours from the ZIP; else none (the field is optional). Returns it and where it
    came from. A refused one is looked at again after a day."""
    refused: str | None = None
    try:
        raw = item.data["thumbnail_url"]
        url = (
            storage.storage_url(raw, "thumbnailUrl")
            if raw
            else storage.blobs_bucket_url(TAPE.oven_thumbnail_key(item))
        )
    except ItemProblem as problem:
        url, refused = None, str(problem)
    else:
        known = cache.get(f"{MADE_VERSION}:thumbnail:{url}")
        thumbnail = cache.blob(known and known.get("thumbnail"))
        if thumbnail:
            return thumbnail, "oven"
        refused = (cache.get(f"{MADE_VERSION}:thumbnail:{url}", THUMBNAIL_RECHECK_S) or {}).get("refused")
    if url is not None and refused is None:
        try:
            data = storage.fetch(url, max_bytes=LEXICON_THUMBNAIL_MAX)
            check_jpeg(data, LEXICON_THUMBNAIL_MAX)
        except (ItemProblem, TapeError) as problem:
            refused = str(problem)
            cache.put(f"{MADE_VERSION}:thumbnail:{url}", {"refused": refused})
        else:
            thumbnail = cache.store_blob(data, THUMBNAIL_MIME)
            cache.put(f"{MADE_VERSION}:thumbnail:{url}", {"thumbnail": thumbnail.__dict__})
            return thumbnail, "oven"
    try:
        return _zip_thumbnail(item, storage, cache, max_video), f"zip (oven's refused: {refused})"
    except (ItemProblem, TapeError) as problem:
        return None, f"none (oven's refused: {refused}; the ZIP's: {problem})"


def _zip_thumbnail(item: Item, storage: StorageResource, cache: DerivedCache, max_video: int) -> Blob:
    """Our poster frame from the tape's ZIP: the one of an earlier encode when there was one."""
    zip_url = storage.url_of(TAPE.zip_file(item))
    encoded = _earlier_encode(cache, zip_url, max_video)
    known = cache.get(f"{TAPE_VERSION}:thumbnail:{zip_url}")
    thumbnail = cache.blob((encoded and encoded["thumbnail"]) or (known and known["thumbnail"]))
    if thumbnail:
        return thumbnail
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as work:
        zip_path = Path(work) / "tape.zip"
        storage.fetch_to_file(zip_url, zip_path)
        thumbnail = cache.store_blob(zip_thumbnail(zip_path), THUMBNAIL_MIME)
    cache.put(f"{TAPE_VERSION}:thumbnail:{zip_url}", {"thumbnail": thumbnail.__dict__})
    return thumbnail


def _native_tape(
    item: Item, storage: StorageResource, cache: DerivedCache, stats: BlobStats, max_video: int, threads: int
) -> Derived:
    """An ac-native tape: its uploaded MP4 as it is when sound, else remuxed or transcoded. No ZIP exists,
    so none is fetched, and there is no poster frame."""
    url = storage.storage_url(item.data["mp4_url"], "mp4Url")
    key = f"{MADE_VERSION}:native:{url}:{max_video}"
    known = cache.get(key)
    video = cache.blob(known and known["video"])
    if video and known:
        stats.count({"video": video}, cached=True)
        stats.tapes.append({"ref": item.ref, "source": "native", "how": known["how"], "cached": True})
        return Derived(blobs={"video": video})
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as work:
        path = Path(work) / "native.mp4"
        storage.fetch_to_file(url, path)
        data, how = _native_mp4(path, max_video, threads)
    video = cache.store_blob(data, VIDEO_MIME)
    cache.put(key, {"video": video.__dict__, "how": how})
    stats.count({"video": video}, cached=False)
    stats.tapes.append({"ref": item.ref, "source": "native", "how": how, "cached": False})
    return Derived(blobs={"video": video})


def _native_mp4(path: Path, max_video: int, threads: int) -> tuple[bytes, str]:
    """The MP4 to upload for an uploaded one, and how it was made: as uploaded when sound; remuxed when only
    its `moov` is after `mdat`; transcoded otherwise (raises TapeError when even that fails)."""
    try:
        size = path.stat().st_size
        if size > max_video:
            raise TapeError(f"MP4 of {size} bytes is larger than {max_video}")
        data = path.read_bytes()
        facts = mp4_facts(data)
        how = "as uploaded"
        h264 = len(facts.video_codecs) == 1 and facts.video_codecs[0] in H264_ENTRIES
        if h264 and not facts.faststart:
            remuxed = path.with_name("remuxed.mp4")
            remux_faststart(path, remuxed)
            path, data, how = remuxed, remuxed.read_bytes(), "remuxed: moov was after mdat"
        check_mp4(data, max_video)
        check_decodes(path)
        return data, how
    except TapeError as problem:
        return transcode_mp4(path, max_video, threads=threads), f"transcoded: {problem.reason}"
