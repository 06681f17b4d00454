"""The blob stage: painting thumbnails (and recording detection) and tape MP4s, cached by content."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from acpipeline.core.items import Blob, Derived, Item, ItemProblem
from acpipeline.core.media import PAINTING
from acpipeline.core.tape_video.limits import TapeError
from acpipeline.core.thumbnail import ImageProblem, painting_thumbnail
from acpipeline.resources.storage import StorageResource
from acpipeline.settings import network_concurrency
from acpipeline.sync.cache import DerivedCache
from acpipeline.sync.tape_blobs import derive_tape

THUMBNAIL_VERSION = "thumb-v1"  # bump when the thumbnail rules change, so cached thumbnails are remade
RECORDING_RECHECK_S = 24 * 3600  # a missing recording ZIP may still be uploaded: look again daily
LEXICON_VIDEO_MAX = 52_428_800


@dataclass
class BlobStats:
    """One blob stage's counts for its log line and metadata: items derived, from the cache or failed, bytes
    made, and each tape's facts."""

    derived: int = 0
    cached: int = 0
    failed: int = 0
    bytes: int = 0
    tapes: list[dict[str, Any]] = field(default_factory=list)

    def count(self, blobs: dict[str, Blob], cached: bool) -> None:
        if cached:
            self.cached += 1
        else:
            self.derived += 1
        self.bytes += sum(blob.size for blob in blobs.values())


def painting_thumbnail_blob(
    item: Item,
    storage: StorageResource,
    cache: DerivedCache,
    stats: BlobStats,
    decoding: AbstractContextManager[Any] | None = None,
) -> Blob:
    """The painting's thumbnail, fetched and made or from the cache; `decoding` bounds how many images are
    decoded at once."""
    image_url = storage.url_of(PAINTING.image_file(item))
    key = f"{THUMBNAIL_VERSION}:{image_url}"
    thumb = cache.blob(cache.get(key))
    if thumb is None:
        png = storage.fetch(image_url)
        with decoding or nullcontext():
            made = painting_thumbnail(png)
        thumb = cache.store_blob(made, "image/png")
        cache.put(key, thumb.__dict__)
        stats.derived += 1
    else:
        stats.cached += 1
    stats.bytes += thumb.size
    return thumb


def recording_exists(item: Item, storage: StorageResource, cache: DerivedCache) -> bool:
    """Whether the painting's recording ZIP exists (a HEAD; a missing one is looked at again daily)."""
    recording_url = storage.url_of(PAINTING.recording_file(item))
    known = cache.get(f"recording:{recording_url}")
    if known is None or (
        not known["exists"] and cache.get(f"recording:{recording_url}", RECORDING_RECHECK_S) is None
    ):
        known = {"exists": storage.exists(recording_url)}
        cache.put(f"recording:{recording_url}", known)
    return bool(known["exists"])


def derive_blobs(
    items: list[Item],
    media: str,
    storage: StorageResource,
    cache: DerivedCache,
    max_video: int = LEXICON_VIDEO_MAX,
    cores: int | None = None,
    on_derived: Callable[[Item, Derived], None] | None = None,
) -> tuple[dict[str, Derived], BlobStats]:
    """Derived blobs of every wanted, well-formed item, by ref; a failure is recorded on the item's
    Derived and the others go on. `on_derived` is told of each item derived as soon as it is (from the
    derive threads): the blob stage's pre-uploads (`sync/pre_upload.py`) start there."""
    stats = BlobStats()
    todo = [i for i in items if i.wanted and i.problem is None]
    cores = cores or os.cpu_count() or 1

    def guarded(item: Item, derive: Callable[[Item], Derived]) -> tuple[str, Derived]:
        try:
            derived = derive(item)
        except (ItemProblem, ImageProblem, TapeError) as problem:
            stats.failed += 1
            return item.ref, Derived(problem=str(problem))
        if on_derived is not None:
            on_derived(item, derived)
        return item.ref, derived

    if media == "painting":
        return _derive_paintings(todo, storage, cache, stats, cores, guarded), stats
    if media != "tape":
        return {item.ref: Derived() for item in todo}, stats

    def derive(item: Item) -> Derived:
        return derive_tape(item, storage, cache, stats, max_video, threads=1)

    # One ffmpeg thread per worker and one worker per core: never more encoder threads than cores.
    with cache.deferred(), ThreadPoolExecutor(max_workers=cores) as pool:
        return dict(pool.map(partial(guarded, derive=derive), todo)), stats


def _derive_paintings(
    todo: list[Item],
    storage: StorageResource,
    cache: DerivedCache,
    stats: BlobStats,
    cores: int,
    guarded: Callable[[Item, Callable[[Item], Derived]], tuple[str, Derived]],
) -> dict[str, Derived]:
    """Mostly waiting on storage (a GET and a HEAD per painting, a round trip each): several fetches at once
    (ACPIPELINE_NETWORK_CONCURRENCY), while at most one decode per core holds an image in memory. Each made
    thumbnail's recording check goes to a pool of its own, so the fetching worker goes on to the next
    painting instead of waiting a round trip more; a painting whose image failed gets no check."""
    workers = network_concurrency()
    decoding = threading.BoundedSemaphore(cores)

    def thumbnail(item: Item) -> Blob | str:
        try:
            return painting_thumbnail_blob(item, storage, cache, stats, decoding)
        except (ItemProblem, ImageProblem) as problem:
            return str(problem)

    def checked(item: Item, thumbnail: Blob) -> tuple[str, Derived]:
        def with_recording(item: Item) -> Derived:
            recording = recording_exists(item, storage, cache)
            return Derived(blobs={"thumbnail": thumbnail}, facts={"recording": recording})

        return guarded(item, with_recording)

    out: dict[str, Derived] = {}
    with cache.deferred(), ExitStack() as pools:
        # On the way out nothing queued is started: an error (storage gone) ends the stage now.
        checks = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recording-check")
        pools.callback(checks.shutdown, cancel_futures=True)
        fetches = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="painting-fetch")
        pools.callback(fetches.shutdown, cancel_futures=True)
        made = {fetches.submit(thumbnail, item): item for item in todo}
        checking = []
        for done in as_completed(made):
            item, got = made[done], done.result()
            if isinstance(got, str):
                stats.failed += 1
                out[item.ref] = Derived(problem=got)
            else:
                checking.append(checks.submit(checked, item, got))
        out.update(future.result() for future in checking)
    return {item.ref: out[item.ref] for item in todo}
