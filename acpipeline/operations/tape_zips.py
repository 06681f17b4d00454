"""Tapes are the one source that changes outside MongoDB: the platform uploads a tape's ZIP after its
document. The new-content sensor HEADs the ZIPs of live tapes without a record, and requests a tape
partition when a ZIP it saw missing appears; a missing one is looked for again every `ZIP_RECHECK_S`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from acpipeline.core.items import Item, ItemProblem
from acpipeline.core.media import TAPE
from acpipeline.resources.storage import StorageResource

ZIP_RECHECK_S = 300  # a missing tape ZIP is looked for again at most this often
MAX_ZIP_CHECKS = 64  # HEAD requests per tick; the rest wait for the next tick
ZIP_CHECK_TIMEOUT_S = 5.0
ZIP_CHECK_BUDGET_S = 15.0
MISSING, PRESENT = "m", "p"


@dataclass
class ZipCheck:
    """One tick's tape ZIP lookups: the states to remember, the handles whose missing ZIP appeared, the
    lookups made."""

    states: dict[str, list[Any]]  # tape ref -> [MISSING|PRESENT, checked_at]
    appeared: set[str]  # handles with a tape whose missing ZIP is there now
    checked: int


def check_tape_zips(
    unlinked: dict[str, list[Item]], known: dict[str, list[Any]], storage: StorageResource, now: float
) -> ZipCheck:
    """HEAD the ZIPs of live tapes without a record that are due: never looked at, or missing and last looked
    at `ZIP_RECHECK_S` ago. A ZIP seen present is not looked at again while its tape has no record (a sync
    that fails it anyway is the nightly schedule's to retry)."""
    states: dict[str, list[Any]] = {}
    due: list[tuple[str, Item, bool]] = []  # (handle, tape, known to be missing)
    for handle, items in unlinked.items():
        for item in items:
            entry = known.get(item.ref)
            if entry:
                states[item.ref] = entry
            if not entry or (entry[0] == MISSING and now - entry[1] >= ZIP_RECHECK_S):
                due.append((handle, item, bool(entry)))
    due.sort(key=lambda d: not d[2])  # tapes known to be missing first: they are the ones waited on
    due = due[:MAX_ZIP_CHECKS]
    appeared: set[str] = set()
    if not due:
        return ZipCheck(states, appeared, 0)
    quick = StorageResource(
        image_url=storage.image_url,
        guest_image_url=storage.guest_image_url,
        zip_url=storage.zip_url,
        buckets=list(storage.buckets),
        timeout_s=ZIP_CHECK_TIMEOUT_S,
    )

    def exists(item: Item) -> bool | None:
        try:
            return quick.exists(quick.url_of(TAPE.zip_file(item)))
        except ItemProblem:
            return None  # unreachable, refused or not a storage URL: look again next tick

    pool = ThreadPoolExecutor(max_workers=8)
    futures = {pool.submit(exists, item): (handle, item, missing) for handle, item, missing in due}
    done, pending = wait_futures(futures, timeout=ZIP_CHECK_BUDGET_S)
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        handle, item, was_missing = futures[future]
        found = future.result()
        if found is None:
            continue
        states[item.ref] = [PRESENT if found else MISSING, int(now)]
        if found and was_missing:
            appeared.add(handle)
    if not pending:
        quick.teardown_after_execution(None)
    return ZipCheck(states, appeared, len(done))
