"""Read the platform's MongoDB: accounts (users with an ATProto account) and each owner's items."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acpipeline.core.items import Item
from acpipeline.core.media import MediaRules
from acpipeline.settings import ART_GUEST_ID

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoCollection, MongoDatabase


@dataclass(frozen=True)
class Account:
    """A PDS account; `owner` is the Auth0 sub whose items it holds (None: the anonymous art account)."""

    handle: str
    did: str
    password: str = field(repr=False)
    owner: str | None


@dataclass(frozen=True)
class Accounts:
    """MongoDB's users split in two: those with an ATProto account, by PDS handle, and the subs of the
    others."""

    by_handle: dict[str, Account]
    without_account: list[str]  # subs of users who have no ATProto account (skipped, reported)


def _credentials(user: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(did, handle, password) from `atproto.{did,handle,password}` or the older flat fields."""
    nested = user.get("atproto")
    atproto: dict[str, Any] = nested if isinstance(nested, dict) else {}
    did = atproto.get("did") or user.get("atproto_did")
    handle = atproto.get("handle") or user.get("atproto_handle")
    password = atproto.get("password") or user.get("atproto_password")
    return did, handle, password


_PROJECTION = {"atproto": 1, "atproto_did": 1, "atproto_handle": 1, "atproto_password": 1}


def find_accounts(db: MongoDatabase) -> Accounts:
    """Users with an ATProto account (`did` and `password` both present), keyed by PDS handle."""
    by_handle: dict[str, Account] = {}
    without: list[str] = []
    for user in read_all(db["users"], {}, _PROJECTION):
        did, handle, password = _credentials(user)
        if not (did and password and handle):
            without.append(str(user["_id"]))
            continue
        owner = None if user["_id"] == ART_GUEST_ID else str(user["_id"])
        by_handle[handle] = Account(handle=handle, did=did, password=password, owner=owner)
    return Accounts(by_handle=by_handle, without_account=sorted(without))


def find_account(db: MongoDatabase, handle: str) -> Account | None:
    """One account by its PDS handle, without scanning every user."""
    for user in read_all(
        db["users"], {"$or": [{"atproto.handle": handle}, {"atproto_handle": handle}]}, _PROJECTION
    ):
        did, found, password = _credentials(user)
        if did and password and found == handle:
            return Account(handle, did, password, None if user["_id"] == ART_GUEST_ID else str(user["_id"]))
    return None


def owner_filter(owner: str | None) -> dict[str, Any]:
    """Owned: `{user: sub}`; anonymous: no `user` (a null or empty `user` counts as anonymous too)."""
    return {"user": owner} if owner is not None else {"user": {"$in": [None, ""]}}


def read_all(
    collection: MongoCollection, filter: dict[str, Any], fields: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Every matching document, projected.

    The embedded store's cursor (mongomock's) copies its whole result list on every `next()`, which makes
    plain iteration quadratic (30,000 documents: 4.5 s instead of 1 s). Its cursor can hand the list over at
    once; any other cursor (pymongo's, against Atlas) is iterated as usual."""
    cursor = collection.find(filter, fields)
    compute = getattr(cursor, "_compute_results", None)
    if compute is not None and _embedded(collection):
        return list(compute(with_limit_and_skip=True))
    return list(cursor)


def extract_items(db: MongoDatabase, rules: MediaRules, owner: str | None) -> list[Item]:
    """Every document of the owner in the media's collection, removed ones included (they drive
    deletes), as items sorted by `when`."""
    return extract_owners(db, rules, [owner])[owner]


def _embedded(collection: MongoCollection) -> bool:
    return type(collection).__module__.startswith("litemongo.")


def _read_owned(collection: MongoCollection, owners: list[str | None]) -> list[dict[str, Any]]:
    """The documents whose `user` is one of `owners`. The embedded store evaluates `$in` in Python, one
    list scan per document (100 owners over 30,000 documents: 1.4 s); reading everything and keeping the
    owners' documents with a set takes 0.7 s whatever the number of owners. A server answers `$in` itself."""
    if len(owners) > 1 and _embedded(collection):
        wanted = set(owners)
        owned = []
        for doc in read_all(collection, {}):
            user = doc.get("user")
            if isinstance(user, str | None) and user in wanted:
                owned.append(doc)
        return owned
    query = {"user": owners[0]} if len(owners) == 1 else {"user": {"$in": owners}}
    return read_all(collection, query)


def extract_owners(
    db: MongoDatabase, rules: MediaRules, owners: list[str | None]
) -> dict[str | None, list[Item]]:
    """`extract_items` for many owners at once: one query (a batched run reads each collection once)."""
    found: dict[str | None, list[Item]] = {owner: [] for owner in owners}
    named = [owner for owner in owners if owner is not None]
    values: list[str | None] = list(named)
    if None in found and rules.may_be_anonymous:
        values += [None, ""]
    if not values:
        return found
    for doc in _read_owned(db[rules.collection], values):
        owner = doc.get("user") or None
        # A query on `user` also matches an array holding the owner (or an unhashable value): such a
        # document is nobody's item, as the embedded store's own reading (`_read_owned`) has it.
        if isinstance(owner, str | None) and owner in found and rules.is_item(doc):
            found[owner].append(rules.normalise(doc))
    for items in found.values():
        items.sort(key=lambda i: (i.when is None, i.when or 0, i.ref))
    return found
