"""Partitions: PDS handle (dynamic, registered from MongoDB's users) x media type (static); and the ranges
that put many of them in one run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import (
    DagsterInstance,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.sync.extract import find_accounts

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

HANDLE_PARTITIONS = "handle"  # the name of the handles' dynamic partitions in the instance
handle_partitions = DynamicPartitionsDefinition(name=HANDLE_PARTITIONS)
media_partitions = StaticPartitionsDefinition(MEDIA_NAMES)
sync_partitions = MultiPartitionsDefinition({"handle": handle_partitions, "media": media_partitions})

# Partitions in one run, for backfills, the schedule and the sensor. At the platform's 979 accounts a pass
# over every partition is 20 runs (4 per media type): each run costs a process start-up (2-3 s of CPU here).
PARTITIONS_PER_RUN = 250
# Past this many runs for a set of scattered partitions, ranges also cover the handles between them.
MAX_RUNS = 50
# Run tag: "true" skips the convergence proof, so every partition of the run is listed and reconciled.
FULL_TAG = "acpipeline/full"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def register_handles(instance: DagsterInstance, db: MongoDatabase) -> list[str]:
    """Add the handle of every user with an ATProto account that is not a partition yet; returns them.
    In one call: adding a handle invalidates Dagster's partition status cache of every asset."""
    known = set(instance.get_dynamic_partitions(HANDLE_PARTITIONS))
    new = sorted(set(find_accounts(db).by_handle) - known)
    if new:
        instance.add_dynamic_partitions(HANDLE_PARTITIONS, new)
    return new


def partition_key(handle: str, media: str) -> str:
    """The key Dagster gives the (handle, media) partition: its dimensions by name, joined with `|`."""
    return f"{handle}|{media}"


def keys_of_run(keys: Iterable[str]) -> list[tuple[str, str]]:
    """(handle, media) of each partition key of a run (`context.partition_keys`)."""
    out = []
    for key in keys:
        by_dimension = getattr(key, "keys_by_dimension", None)
        if by_dimension is None:
            handle, _, media = str(key).rpartition("|")
        else:
            handle, media = by_dimension["handle"], by_dimension["media"]
        out.append((handle, media))
    return out


@dataclass(frozen=True)
class PartitionRange:
    """Handles `handles[first..last]` (in the instance's order) x media `media[first..last]`."""

    start: str
    end: str
    size: int

    def tags(self) -> dict[str, str]:
        return {RANGE_START_TAG: self.start, RANGE_END_TAG: self.end}


def partition_ranges(
    order: Sequence[str],
    wanted: Iterable[tuple[str, str]],
    per_run: int = PARTITIONS_PER_RUN,
    media_together: bool = False,
    bridge_gaps: bool = False,
) -> list[PartitionRange]:
    """Ranges covering exactly the `wanted` partitions, each of at most `per_run` partitions.

    Dagster's range over two dimensions is the product of a handle range (contiguous in `order`, the
    instance's dynamic partition order) and a media range (contiguous in MEDIA_NAMES). `media_together`:
    handles whose wanted media are all six share ranges of every media (a reconcile touches an account in
    one run); otherwise ranges are per media type, as Dagster's own backfills cut them. `bridge_gaps`: a
    range may also cover handles between wanted ones (fewer runs; the run proves those converged cheaply)."""
    position = {handle: n for n, handle in enumerate(order)}
    by_handle: dict[str, set[str]] = {}
    for handle, media in wanted:
        if handle not in position:
            raise ValueError(f"{handle} is not a registered handle partition")
        by_handle.setdefault(handle, set()).add(media)
    groups: dict[tuple[str, ...], list[str]] = {}
    for handle in sorted(by_handle, key=position.__getitem__):
        names = by_handle[handle]
        if media_together and len(names) == len(MEDIA_NAMES):
            groups.setdefault(tuple(MEDIA_NAMES), []).append(handle)
        else:
            for name in names:
                groups.setdefault((name,), []).append(handle)
    ranges = []
    for media_range, handles in groups.items():
        per_range = max(1, per_run // len(media_range))
        first = last = None
        for handle in handles:
            if first is not None and last is not None:
                fits = position[handle] - position[first] < per_range
                if not (fits and (bridge_gaps or position[handle] == position[last] + 1)):
                    ranges.append(_range(order, first, last, media_range))
                    first = None
            first = handle if first is None else first
            last = handle
        if first is not None and last is not None:
            ranges.append(_range(order, first, last, media_range))
    return ranges


def range_members(order: Sequence[str], start: str, end: str) -> list[tuple[str, str]]:
    """The partitions of the range `start`..`end` (Dagster's product of a handle range in the instance's
    `order` and a media range), without asking the instance again."""
    (first, first_media), (last, last_media) = keys_of_run([start, end])
    handles = list(order)
    try:
        a, b = handles.index(first), handles.index(last)
        m, n = MEDIA_NAMES.index(first_media), MEDIA_NAMES.index(last_media)
    except ValueError:
        return []
    return [(h, media) for h in handles[a : b + 1] for media in MEDIA_NAMES[m : n + 1]]


def few_ranges(order: Sequence[str], wanted: Iterable[tuple[str, str]]) -> list[PartitionRange]:
    """Ranges of exactly the wanted partitions (per media type); when those are so scattered that this makes
    more than `MAX_RUNS` runs, ranges that also cover the handles between them. A covered partition that
    needed nothing is proven converged in the run, but it costs that run a materialization and a check
    event: hence exact ranges first."""
    wanted = list(wanted)
    exact = partition_ranges(order, wanted)
    return exact if len(exact) <= MAX_RUNS else partition_ranges(order, wanted, bridge_gaps=True)


def _range(order: Sequence[str], first: str, last: str, media: tuple[str, ...]) -> PartitionRange:
    handles = order.index(last) - order.index(first) + 1
    return PartitionRange(
        partition_key(first, media[0]), partition_key(last, media[-1]), handles * len(media)
    )
