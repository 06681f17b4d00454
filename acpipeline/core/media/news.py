"""News: the platform's news posts (collection `news-posts`), each in its author's repository.

A post whose `status` is "dead" was taken down, so its record goes (the platform leaves those on the PDS).
Posts copied in from Bluesky (`external` set, no `user`) are not ours: they never become items, and their
`atproto` link (an `app.bsky.feed.post`) is never read as one of our records. Titles and texts are not cut:
an admin post over the lexicon's limits is a failed item with its reason, as over-long moods are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from acpipeline.core.items import Derived, Item, iso_when, required_text
from acpipeline.core.media.base import MediaRules

MAX_URI_BYTES = 8192  # the atproto `uri` string format's limit


class NewsRules(MediaRules):
    """News posts: only the platform's own (Bluesky copies are no items), taken down by `status: dead`."""

    name = "news"
    nsid = "computer.aesthetic.news"
    collection = "news-posts"
    removed_flag = "status"
    source_fields = ("title", "text", "url", "external")
    may_be_anonymous = False

    def is_own_content(self, doc: dict[str, Any]) -> bool:
        return doc.get("external") is None

    def removed(self, doc: dict[str, Any]) -> str | None:
        return "dead" if doc.get("status") == "dead" else None

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"headline": required_text(doc, "title")}
        if doc.get("text"):
            data["body"] = required_text(doc, "text")
        link = web_link(doc.get("url"))
        if link:
            data["link"] = link
        return data

    def record(self, item: Item, derived: Derived) -> dict[str, Any]:
        return {**item.data, "when": iso_when(item.when), "ref": item.ref}


def web_link(value: Any) -> str | None:
    """`value` when it is an absolute http(s) URL a reader can follow, else None (the record then has no
    `link`: a post's bad URL does not keep its headline off the PDS)."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "replace")) > MAX_URI_BYTES:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.hostname else None
