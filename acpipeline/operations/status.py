"""`acpipeline status`: per partition, the items MongoDB wants synced against the records on the PDS."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagster import Definitions

from acpipeline.core.media import MEDIA
from acpipeline.core.plan import not_in_mongodb
from acpipeline.errors import OperatorError
from acpipeline.resources import resolved
from acpipeline.sync.extract import extract_items, find_accounts
from acpipeline.sync.records import list_existing

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase
    from acpipeline.resources.pds import PdsClient


def partition_status(defs: Definitions, handles: list[str] | None) -> list[dict[str, Any]]:
    """Per partition: items MongoDB wants synced vs records on the PDS, and of those the records the sync
    keeps though they stand for no MongoDB document (`not_in_mongodb`: where MongoDB is not the type's
    whole truth; elsewhere such a record is a difference the next sync deletes)."""
    with resolved(defs, "mongo") as mongo, resolved(defs, "pds") as pds:
        return _status(mongo.db(), pds.client(), handles)


def _status(db: MongoDatabase, client: PdsClient, handles: list[str] | None) -> list[dict[str, Any]]:
    client.describe_server()  # a PDS that does not answer is named even when there is nothing to count
    accounts = find_accounts(db)
    rows = []
    unknown = [h for h in handles or [] if h not in accounts.by_handle]
    if unknown:
        raise OperatorError(f"no user with an ATProto account has the handle {', '.join(unknown)}")
    for handle in handles or sorted(accounts.by_handle):
        account = accounts.by_handle[handle]
        for name, rules in MEDIA.items():
            items = extract_items(db, rules, account.owner)
            desired = sum(1 for i in items if i.wanted and i.problem is None)
            existing = list_existing(client, account.did, rules.nsid)
            kept = 0 if rules.mongodb_is_whole_truth else len(not_in_mongodb(rules, existing, items))
            rows.append(
                {
                    "handle": handle,
                    "media": name,
                    "desired": desired,
                    "on_pds": len(existing),
                    "not_in_mongodb": kept,
                }
            )
    return rows
