"""Partitions: PDS handle (dynamic, registered from MongoDB's users) x media type (static)."""

from __future__ import annotations

from dagster import (
    DagsterInstance,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)
from pymongo.database import Database

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.sync.extract import find_accounts

handle_partitions = DynamicPartitionsDefinition(name="handle")
media_partitions = StaticPartitionsDefinition(MEDIA_NAMES)
sync_partitions = MultiPartitionsDefinition({"handle": handle_partitions, "media": media_partitions})


def register_handles(instance: DagsterInstance, db: Database) -> list[str]:
    """Add the handle of every user with an ATProto account that is not a partition yet; returns them."""
    known = set(instance.get_dynamic_partitions(handle_partitions.name))
    new = sorted(set(find_accounts(db).by_handle) - known)
    if new:
        instance.add_dynamic_partitions(handle_partitions.name, new)
    return new


def partition_key(handle: str, media: str) -> str:
    return f"{handle}|{media}"
