"""What every media type shares; each type's own rules live in its module beside this one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from bson import ObjectId

from acpipeline.core.items import Derived, Item, ItemProblem, normalise_when
from acpipeline.core.link_fields import link_of

AC = "https://aesthetic.computer"


@dataclass(frozen=True)
class StoredFile:
    """Where one of an item's source files lies in the platform's buckets, as the storage templates need it:
    `template` names the URL template (a user's painting image, an anonymous one, a ZIP), then the bucket,
    the owner (None: anonymous) and the file's name. The storage resource checks every part."""

    template: Literal["image", "guest_image", "zip"]
    bucket: str
    owner: str | None
    name: str


class MediaRules(ABC):
    """One media type: its MongoDB collection, its lexicon, how a document becomes a record."""

    name: ClassVar[str]
    nsid: ClassVar[str]
    collection: ClassVar[str]
    removed_flag: ClassVar[str] = "nuked"  # the document field `removed()` reads
    may_be_anonymous: ClassVar[bool] = True
    # Whether MongoDB holds every item of the type. Where it does, a record that no document claims is an
    # orphan (its item was hard-deleted) and goes; where it does not (KidLisp, whose pieces now live in the
    # platform's own store), such a record is kept and counted, and only a document that positively says
    # "removed" deletes one.
    mongodb_is_whole_truth: ClassVar[bool] = True
    mirrors_link: ClassVar[bool] = False  # the link also under `at.` (core/link_fields.py)
    # The document fields `fields()` reads, besides `_id`, `user`, `when` and the removed flag: what change
    # detection projects (operations/source_scan.py; a test checks a projected document normalises the same).
    source_fields: ClassVar[tuple[str, ...]] = ()
    blob_fields: ClassVar[tuple[str, ...]] = ()  # record fields that hold blobs
    # Optional record fields we add only when we write the record anyway: a record that lacks them (one the
    # platform wrote) is adopted as it is, not rewritten for them (core/plan.py `differences`).
    added_fields: ClassVar[tuple[str, ...]] = ()
    # The work of syncing one item, in record writes (~1.5 ms of the PDS): the sync starts the partitions
    # with the most work first, so the long ones overlap instead of running last.
    work_per_item: ClassVar[float] = 1.0

    def normalise(self, doc: dict[str, Any]) -> Item:
        """The document as an Item; a document that cannot become a record keeps its problem."""
        ref = str(doc["_id"]) if isinstance(doc.get("_id"), ObjectId) else str(doc.get("_id"))
        owner = doc.get("user") or None
        removed = self.removed(doc)
        link = link_of(doc, self.mirrors_link)
        if link and link.uri and f"/{self.nsid}/" not in link.uri:
            link = None  # a link to some other collection's record is not one of ours
        try:
            when = normalise_when(doc.get("when"))
            data = self.fields(doc)
        except ItemProblem as problem:
            return Item(self.name, ref, owner, None, removed=removed, link=link, problem=str(problem))
        return Item(self.name, ref, owner, when, data, removed=removed, link=link)

    def is_item(self, doc: dict[str, Any]) -> bool:
        """Whether the document is an item at all: the platform's own content (not a copy of someone
        else's) and finished (not work in progress). Anything else is invisible to the sync: never desired,
        never failed, never a change the sensor sees."""
        return self.is_own_content(doc) and not self.in_progress(doc)

    def is_own_content(self, doc: dict[str, Any]) -> bool:
        """Whether the document is the platform's own content to mirror (not a copy of someone else's)."""
        return True

    def in_progress(self, doc: dict[str, Any]) -> bool:
        """Whether the document is unfinished work its owner has not published yet."""
        return False

    def removed(self, doc: dict[str, Any]) -> str | None:
        """Why the document's record must go (the owner took it down), or None while it stays."""
        return self.removed_flag if doc.get(self.removed_flag) is True else None

    @abstractmethod
    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document's fields the record needs, checked; raises ItemProblem."""

    @abstractmethod
    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        """The record value (without `$type`), from the item and its derived blobs."""

    def value(self, item: Item, derived: Derived) -> dict[str, Any]:
        return {"$type": self.nsid, **self.record(item, derived)}

    def natural_key(self, value: dict[str, Any]) -> str | None:
        """How to recognise an old record that carries no `ref` (None: it cannot be recognised)."""
        return None

    def item_natural_key(self, item: Item) -> str | None:
        return None


def record_ref(value: dict[str, Any]) -> str | None:
    """The MongoDB _id a record points at: `ref`, or `mongoId` on the oldest mood records."""
    ref = value.get("ref") or value.get("mongoId")
    return ref if isinstance(ref, str) else None
