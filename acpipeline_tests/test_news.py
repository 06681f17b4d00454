"""News posts against the real reference PDS: creates, the platform's own records adopted, edits, dead
posts removed, Bluesky copies left alone; every record valid against the platform's published lexicon."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from bson import ObjectId

from acpipeline.core.lexicon import Lexicon
from acpipeline.core.media import MEDIA

from .helpers import T0, add_user, head, records, sync
from .oracle import js_iso

NEWS = MEDIA["news"]
PUBLISHED = Path(__file__).resolve().parent / "data" / "published_lexicons" / "news-lexicon" / "news.json"


def post(sub: str | None, n: int, title: str, **extra) -> dict:
    """A post as the platform's news-api stores it."""
    when = T0 + timedelta(minutes=n)
    return {
        "_id": ObjectId(),
        "code": f"p{n}x",
        "title": title,
        "user": sub,
        "when": when,
        "updated": when,
        "score": 1,
        "commentCount": 0,
        "status": "live",
        **extra,
    }


def platform_record(world, db, sub: str, did: str, doc: dict) -> str:
    """The record the platform's news-atproto.mjs writes (createRecord, a PDS-chosen key), with the
    `atproto: {rkey, uri, did}` it sets on the post; returns the record's rkey."""
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    session = world.client.session(did, password)
    value = {
        "$type": NEWS.nsid,
        "headline": doc["title"],
        "when": js_iso(doc["when"]),
        "ref": str(doc["_id"]),
    }
    if doc.get("text"):
        value["body"] = doc["text"]
    body = json.dumps({"repo": did, "collection": NEWS.nsid, "record": value}).encode()
    created = world.client.call("POST", "com.atproto.repo.createRecord", body=body, session=session)
    rkey = created["uri"].rsplit("/", 1)[1]
    db["news-posts"].update_one(
        {"_id": doc["_id"]}, {"$set": {"atproto": {"rkey": rkey, "uri": created["uri"], "did": did}}}
    )
    return rkey


def test_news_creates_adopts_edits_removes_dead_and_skips_bluesky_copies(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "newsdesk")
    live = post(
        sub, 1, "the oven bakes tapes now", text="MP4s for every tape.", url="https://aesthetic.computer/oven"
    )
    plain = post(sub, 2, "kidlisp turns one")
    bad_url = post(sub, 3, "a link that is not one", url="see the prompt")
    theirs = post(sub, 4, "written by the platform", text="already on the PDS")
    too_long = post(sub, 5, "the full changelog", text="- a change\n" * 1000)  # 11,000 bytes
    # Copied in from Bluesky: not ours, with or without a `user`; their links name app.bsky.feed.posts.
    copied = post(sub, 6, "an artist's zine", external={"source": "bsky", "postUri": "at://did:plc:b/x"})
    copied["atproto"] = {"did": "did:plc:b", "uri": "at://did:plc:b/app.bsky.feed.post/3abc", "rkey": "3abc"}
    anonymous_copy = {**copied, "_id": ObjectId(), "user": None}
    db["news-posts"].insert_many([live, plain, bad_url, theirs, too_long, copied, anonymous_copy])
    adopted_rkey = platform_record(world, db, sub, did, theirs)

    first = sync(world, [handle], ["news"])[(handle, "news")]
    meta = first.outcome
    assert first.ok and (meta.created, meta.updated, meta.deleted) == (3, 0, 0), first.row()
    assert [f["ref"] for f in first.row()["failed_items"]] == [str(too_long["_id"])]
    assert "body: maxLength 10000 UTF-8 bytes (has 11000)" in first.row()["failed_items"][0]["reason"]

    published = json.loads(PUBLISHED.read_text())
    lexicon = Lexicon(published["id"], "tid", published["defs"]["main"]["record"])
    listed = {r["value"]["ref"]: r for r in records(world, did, NEWS.nsid)}
    assert set(listed) == {str(d["_id"]) for d in (live, plain, bad_url, theirs)}
    for record in listed.values():
        lexicon.validate(record["value"])
    assert listed[str(live["_id"])]["value"] == {
        "$type": NEWS.nsid,
        "headline": "the oven bakes tapes now",
        "body": "MP4s for every tape.",
        "link": "https://aesthetic.computer/oven",
        "when": js_iso(live["when"]),
        "ref": str(live["_id"]),
    }
    assert "link" not in listed[str(bad_url["_id"])]["value"]
    assert listed[str(theirs["_id"])]["uri"].endswith(f"/{adopted_rkey}")  # adopted, not rewritten
    assert db["news-posts"].find_one({"_id": copied["_id"]})["atproto"] == copied["atproto"]
    assert (
        db["news-posts"].find_one({"_id": live["_id"]})["atproto"]["uri"] == listed[str(live["_id"])]["uri"]
    )

    db["news-posts"].update_one({"_id": live["_id"]}, {"$set": {"title": "the oven bakes every tape now"}})
    db["news-posts"].update_one({"_id": plain["_id"]}, {"$set": {"status": "dead"}})
    second = sync(world, [handle], ["news"])[(handle, "news")].outcome
    assert (second.created, second.updated, second.deleted) == (0, 1, 1)
    listed = {r["value"]["ref"]: r["value"] for r in records(world, did, NEWS.nsid)}
    assert set(listed) == {str(d["_id"]) for d in (live, bad_url, theirs)}
    assert listed[str(live["_id"])]["headline"] == "the oven bakes every tape now"
    assert "rkey" not in db["news-posts"].find_one({"_id": plain["_id"]})["atproto"]

    rev = head(world, did)
    third = sync(world, [handle], ["news"])[(handle, "news")].outcome
    assert (third.created, third.updated, third.deleted, third.commits) == (0, 0, 0, 0)
    assert head(world, did) == rev
