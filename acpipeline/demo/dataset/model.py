"""The dataset's vocabulary, shared by its builder, recipes and callers: the collections and buckets, the
media files' object keys, the users, and the summary of what was generated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from acpipeline.errors import OperatorError

CreateAccount = Callable[[str, str], str]  # (pds_handle, password) -> did

USER_BUCKET = "user-aesthetic-computer"
ART_BUCKET = "art-aesthetic-computer"
ART_GUEST_SUB = "art-guest"
ART_GUEST_HANDLE = "art.at.aesthetic.computer"
# The editor's saved states of paintings in progress live in the GridFS bucket `painting-states`.
STATE_FILES, STATE_CHUNKS = "painting-states.files", "painting-states.chunks"
COLLECTIONS = (
    "users", "@handles", "paintings", "moods", "pieces", "kidlisp", "tapes", "news-posts",
    STATE_FILES, STATE_CHUNKS,
)  # fmt: skip
MEDIA_COLLECTIONS = ("paintings", "moods", "pieces", "kidlisp", "tapes", "news-posts")
WIP_STATUS, DONE_STATUS = "wip", "done"  # `status` of a painting in progress and of one sealed ("Done")

EPOCH_START = datetime(2023, 3, 1)
EPOCH_END = datetime(2025, 10, 31)


class DatasetExists(OperatorError):
    """The target database already holds users; pass reset=True to replace them."""


@dataclass(frozen=True)
class DemoUser:
    """One platform user (or the art-guest account that owns anonymous work)."""

    sub: str
    ac_handle: str | None
    pds_handle: str | None
    password: str | None
    did: str | None = None


@dataclass
class PlatformRecord:
    """A record the platform's own code wrote on the PDS, not our sync: a KidLisp piece saved through its
    own store (`kidlisp-projection.mjs`'s row in MongoDB, no `ref` in the record), or a tape the oven baked
    (`tape-atproto.mjs`, linked back under `at`). This package knows no PDS client: whoever seeds creates
    them once the documents are in MongoDB (`acpipeline.demo.environment.write_platform_records`), without
    an rkey (the PDS assigns a TID, as `createRecord` without one does), and fills in `uri` and `cid`."""

    owner: str  # the sub of the account's user (art-guest for anonymous work)
    handle: str  # the account's PDS handle, as MongoDB names it
    collection: str  # the record's NSID
    value: dict[str, Any]  # the record as the platform writes it, without its blobs
    # field -> {"path": the file to upload, "mime_type": ...}: uploaded, then set in the value
    blobs: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str | None = None  # the MongoDB collection of `ref`
    ref: str | None = None  # the document behind it (None: a record MongoDB has no row for)
    link: str | None = None  # the document field the platform writes {rkey, uri, cid} into (`at`)
    did: str | None = None  # once the account exists
    uri: str | None = None  # once created
    cid: str | None = None

    @property
    def rkey(self) -> str | None:
        return self.uri.rsplit("/", 1)[1] if self.uri else None


@dataclass
class DatasetSummary:
    """What was generated: counts, users, and references to the edge cases a sync must handle."""

    size: str
    seed: int
    media_root: str
    counts: dict[str, int]
    users: list[DemoUser]
    handles_with_accounts: list[str]
    user_without_account: DemoUser | None
    flat_fields_user: DemoUser | None
    art_guest: DemoUser
    owned_counts: dict[str, dict[str, int]]  # sub -> collection -> documents (removed ones included)
    anonymous_counts: dict[str, int]  # collection -> documents without an owner (removed ones included)
    removed_counts: dict[str, int]  # collection -> nuked / deleted documents
    recordings: int  # painting recording ZIPs written
    missing_image_painting: dict[str, Any] | None = None  # doc exists, PNG does not
    missing_zip_tape: dict[str, Any] | None = None  # doc exists, ZIP does not
    broken_zip_tape: dict[str, Any] | None = None  # ZIP exists but is truncated
    null_user_painting: dict[str, Any] | None = None  # anonymous with `user: null` rather than absent
    large_painting: dict[str, Any] | None = None  # original PNG above 1 MB (must never be the thumbnail)
    long_kidlisp: dict[str, Any] | None = None
    long_news_body: dict[str, Any] | None = None  # over the news lexicon's body limit: a failed item
    soundtrack_tape: dict[str, Any] | None = None
    same_when_moods: list[str] = field(default_factory=list)  # two moods sharing one `when`
    # The platform's newer shapes (refs as above). Paintings in progress (`status: "wip"`, `slug:
    # "wip/<id>"`, a `wip` sub-document, no PNG) are no items: never a record, never a failure.
    wip_paintings: list[dict[str, Any]] = field(default_factory=list)  # ref | {"steps", "empty"}
    sealed_paintings: list[dict[str, Any]] = field(default_factory=list)  # "done", `wip` kept, PNG there
    # KidLisp identity rows (`kidlisp-projection.mjs`); "platform_record": whether the platform wrote one
    kidlisp_projection_rows: list[dict[str, Any]] = field(default_factory=list)
    platform_tapes: list[dict[str, Any]] = field(default_factory=list)  # oven-baked, linked under `at`
    # Records the platform wrote itself, to be created on the PDS after seeding (see PlatformRecord) ...
    platform_records: list[PlatformRecord] = field(default_factory=list)
    # ... of which these KidLisp ones have no row in MongoDB (code, owner, handle): the sync keeps them.
    orphan_kidlisp_records: list[dict[str, Any]] = field(default_factory=list)
    # What a complete sync should write, computed from the documents: items not nuked or deleted, whose
    # owner has a PDS account (or that are anonymous, for the art account), minus the failing cases above
    # (missing image, missing or broken tape ZIP).
    records_expected: dict[str, int] = field(default_factory=dict)  # collection -> records
    records_expected_total: int = 0
    # What the accounts hold after a complete sync once the platform records exist: records_expected_total
    # plus the orphan KidLisp records (the platform's records of items in MongoDB are adopted, not added).
    records_on_pds_total: int = 0
    # Items per user, over the platform's users (art-guest excluded): for "all" users and for those
    # "with_account", per collection and "items" (all six): users with any, median, p90, p99, max.
    items_per_user: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def user(self, handle: str) -> DemoUser:
        """The user whose AC handle or PDS handle is `handle`."""
        for user in self.users:
            if handle in (user.ac_handle, user.pds_handle):
                return user
        raise KeyError(handle)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (passwords included: this is throwaway demo data)."""
        return asdict(self)


def painting_key(slug: str, user: str | None) -> str:
    """The production object key of a painting's PNG (the part after `:` is the recording)."""
    image_slug = slug.partition(":")[0]
    return f"{user}/painting/{image_slug}.png" if user else f"{image_slug}.png"


def zip_key(slug: str, user: str | None) -> str:
    """The object key of a recording or tape ZIP: `{user/ if any}{slug}.zip`."""
    return f"{user}/{slug}.zip" if user else f"{slug}.zip"


def recording_slug(slug: str) -> str:
    image_slug, _, rec = slug.partition(":")
    return rec or image_slug
