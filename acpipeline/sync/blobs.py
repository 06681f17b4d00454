"""The blob stage: painting thumbnails (and recording detection) and tape MP4s, cached by content."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from acpipeline.core.items import Derived, Item, ItemProblem
from acpipeline.core.tape import TapeError, encode_tape, tape_content_key
from acpipeline.core.thumbnail import ImageProblem, painting_thumbnail
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.cache import DerivedCache

THUMBNAIL_VERSION = "thumb-v1"  # bump when the thumbnail rules change, so cached thumbnails are remade
TAPE_VERSION = "tape-v1"
RECORDING_RECHECK_S = 24 * 3600  # a missing recording ZIP may still be uploaded: look again daily
LEXICON_VIDEO_MAX = 52_428_800


@dataclass
class BlobStats:
    derived: int = 0
    cached: int = 0
    failed: int = 0
    bytes: int = 0
    tapes: list[dict] = field(default_factory=list)


def derive_painting(item: Item, storage: StorageResource, cache: DerivedCache, stats: BlobStats) -> Derived:
    image_url = storage.painting_image_url(item)
    key = f"{THUMBNAIL_VERSION}:{image_url}"
    thumb = cache.blob(cache.get(key))
    if thumb is None:
        thumb = cache.store_blob(painting_thumbnail(storage.fetch(image_url)), "image/png")
        cache.put(key, thumb.__dict__)
        stats.derived += 1
    else:
        stats.cached += 1
    stats.bytes += thumb.size
    recording_url = storage.recording_url(item)
    known = cache.get(f"recording:{recording_url}")
    if known is None or (
        not known["exists"] and cache.get(f"recording:{recording_url}", RECORDING_RECHECK_S) is None
    ):
        known = {"exists": storage.exists(recording_url)}
        cache.put(f"recording:{recording_url}", known)
    return Derived(blobs={"thumbnail": thumb}, facts={"recording": known["exists"]})


def derive_tape(
    item: Item, storage: StorageResource, cache: DerivedCache, stats: BlobStats, max_video: int, threads: int
) -> Derived:
    zip_url = storage.tape_url(item)
    by_url = cache.get(f"{TAPE_VERSION}:url:{zip_url}:{max_video}")
    entry = by_url and cache.get(f"{TAPE_VERSION}:zip:{by_url['zip_sha256']}:{max_video}")
    if entry:
        video, thumbnail = cache.blob(entry["video"]), cache.blob(entry["thumbnail"])
        if video and thumbnail:
            stats.cached += 1
            stats.bytes += video.size + thumbnail.size
            return Derived(blobs={"video": video, "thumbnail": thumbnail}, facts={"zip_url": zip_url})
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as work:
        zip_path = Path(work) / "tape.zip"
        storage.fetch_to_file(zip_url, zip_path)
        sha = tape_content_key(zip_path)
        entry = cache.get(f"{TAPE_VERSION}:zip:{sha}:{max_video}")
        video = thumbnail = None
        if entry:
            video, thumbnail = cache.blob(entry["video"]), cache.blob(entry["thumbnail"])
        if not (video and thumbnail):
            encoded = encode_tape(zip_path, max_bytes=max_video, threads=threads)
            video = cache.store_blob(encoded.mp4, "video/mp4")
            thumbnail = cache.store_blob(encoded.thumbnail_jpeg, "image/jpeg")
            meta = {
                "ref": item.ref,
                "duration_s": round(encoded.duration_s, 3),
                "fps": encoded.fps,
                "frames": encoded.frames,
                "size": f"{encoded.width}x{encoded.height}",
                "mp4_bytes": video.size,
                "encode_s": round(encoded.encode_s, 3),
            }
            entry = {"video": video.__dict__, "thumbnail": thumbnail.__dict__, "meta": meta}
            cache.put(f"{TAPE_VERSION}:zip:{sha}:{max_video}", entry)
            stats.derived += 1
            stats.tapes.append(meta)
        else:
            stats.cached += 1
    cache.put(f"{TAPE_VERSION}:url:{zip_url}:{max_video}", {"zip_sha256": sha})
    stats.bytes += video.size + thumbnail.size
    return Derived(blobs={"video": video, "thumbnail": thumbnail}, facts={"zip_url": zip_url})


def derive_blobs(
    items: list[Item],
    media: str,
    storage: StorageResource,
    cache: DerivedCache,
    max_video: int = LEXICON_VIDEO_MAX,
    cores: int | None = None,
) -> tuple[dict[str, Derived], BlobStats]:
    """Derived blobs of every wanted, well-formed item, by ref; a failure is recorded on the item's
    Derived and the others go on."""
    stats = BlobStats()
    todo = [i for i in items if i.wanted and i.problem is None]
    cores = cores or os.cpu_count() or 1
    derive: Callable[[Item], Derived]
    if media == "painting":
        workers = 8

        def derive(item: Item) -> Derived:
            return derive_painting(item, storage, cache, stats)

    elif media == "tape":
        # One ffmpeg thread per worker and one worker per core: never more encoder threads than cores.
        workers = cores

        def derive(item: Item) -> Derived:
            return derive_tape(item, storage, cache, stats, max_video, threads=1)

    else:
        return {item.ref: Derived() for item in todo}, stats

    def guarded(item: Item) -> tuple[str, Derived]:
        try:
            return item.ref, derive(item)
        except (ItemProblem, ImageProblem, TapeError) as problem:
            stats.failed += 1
            return item.ref, Derived(problem=str(problem))

    with cache.deferred(), ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(guarded, todo)), stats
