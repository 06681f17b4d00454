"""The sync against the real reference PDS: all six media types, convergence, idempotence, dry runs."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import AssetRecordsFilter

from acpipeline.core.cid import record_cid
from acpipeline.core.lexicon import Lexicon, load_lexicons
from acpipeline.core.media import MEDIA
from acpipeline.core.tid import item_tid
from acpipeline.demo.dataset import seed_dataset
from acpipeline.sync.assets import atproto_records
from acpipeline.sync.extract import find_accounts
from acpipeline.sync.partitions import partition_key

from .helpers import add_moods, add_pieces, add_user, create_other_record, head, records, sync
from .oracle import assert_mirrored, expected_moods

PUBLISHED = Path(__file__).resolve().parent / "data" / "published_lexicons"


def published_lexicons() -> dict[str, Lexicon]:
    found = {}
    for path in PUBLISHED.glob("*/*.json"):  # the five, and news, which the platform keeps apart
        doc = json.loads(path.read_text())
        found[doc["id"]] = Lexicon(doc["id"], "tid", doc["defs"]["main"]["record"])
    assert len(found) == len(MEDIA), f"the platform's published lexicons are expected at {PUBLISHED}"
    return found


def link_snapshot(db) -> dict:
    return {
        (name, str(doc["_id"])): (doc.get("atproto"), doc.get("at"))
        for name in (rules.collection for rules in MEDIA.values())
        for doc in db[name].find({})
    }


def test_small_dataset_syncs_every_media_type_and_a_rerun_writes_nothing(world):
    db = world.db()
    summary = seed_dataset(db, world.media_root, world.create_account_unique, size="small")
    results = sync(world)
    accounts = find_accounts(db).by_handle
    assert set(accounts) == set(summary.handles_with_accounts)
    assert {h for h, _ in results} == set(accounts)
    assert all(r.ok and r.check_passed for r in results.values()), [
        r.row() for r in results.values() if not r.ok
    ]

    failed = {f["ref"]: f["reason"] for r in results.values() for f in r.row()["failed_items"]}
    assert str(summary.missing_image_painting["_id"]) in failed
    assert "404" in failed[str(summary.missing_image_painting["_id"])]
    assert str(summary.missing_zip_tape["_id"]) in failed
    assert str(summary.broken_zip_tape["_id"]) in failed
    assert "body: maxLength 10000" in failed[summary.long_news_body["_id"]]

    theirs = published_lexicons()
    total = 0
    for handle, account in accounts.items():
        for name, rules in MEDIA.items():
            listed = records(world, account.did, rules.nsid)
            total += len(listed)
            for record in listed:
                theirs[rules.nsid].validate(record["value"])
                load_lexicons()[rules.nsid].validate(record["value"])
                # the CID the checks expect of a value sent (`RecordSync.state_after`) is the PDS's
                assert record_cid(record["value"]) == record["cid"], (name, record)
            result = results[(handle, name)]
            assert len(listed) == result.outcome.desired, (handle, name)
    assert total > 40

    # anonymous work lives in the art account; moods carry their text in `mood`
    art = accounts["art.at.aesthetic.computer"]
    painting = MEDIA["painting"]
    anonymous = [
        d for d in db["paintings"].find({"user": None}) if not d.get("nuked") and painting.is_item(d)
    ]
    art_paintings = records(world, art.did, "computer.aesthetic.painting")
    assert len(art_paintings) == len(anonymous) - (
        1 if summary.missing_image_painting.get("user") is None else 0
    )
    assert any("recordingUrl" in r["value"] for r in art_paintings)
    assert all(r["value"]["thumbnail"]["size"] < 1_048_576 for r in art_paintings)
    for user_handle, account in accounts.items():
        for record in records(world, account.did, "computer.aesthetic.mood"):
            doc = db["moods"].find_one({"_id": __import__("bson").ObjectId(record["value"]["ref"])})
            assert record["value"]["mood"] == doc["mood"] and "text" not in record["value"], user_handle
    for account in accounts.values():  # the oracle that shares no code with the sync: every mood, once
        if account.owner and account.owner != "art-guest":
            wanted = expected_moods(db, account.owner)
            assert_mirrored(world.pds_url, db, account.did, "moods", "computer.aesthetic.mood", wanted)

    # news: headline and body as the post has them, a link only when the post's URL is one
    news = [r["value"] for a in accounts.values() for r in records(world, a.did, "computer.aesthetic.news")]
    assert len(news) == summary.records_expected["news-posts"]
    for value in news:
        post = db["news-posts"].find_one({"_id": __import__("bson").ObjectId(value["ref"])})
        assert post["status"] == "live" and "external" not in post
        assert value["headline"] == post["title"] and value.get("body") == post.get("text")
        assert value.get("link") == (post.get("url") if post.get("url", "").startswith("https://") else None)

    # links written back; record keys are the deterministic TIDs of the items
    for name, rules in MEDIA.items():
        for doc in db[rules.collection].find({"atproto.rkey": {"$exists": True}}):
            if not rules.is_own_content(
                doc
            ):  # a news post copied from Bluesky keeps its link to the original
                assert "/app.bsky.feed.post/" in doc["atproto"]["uri"] and "syncedAt" not in doc["atproto"]
                continue
            item = rules.normalise(doc)
            assert doc["atproto"]["rkey"] == item_tid(item.when, item.ref)
            assert doc["atproto"]["uri"].endswith(f"/{rules.nsid}/{doc['atproto']['rkey']}")
            if name == "tape":
                assert doc["at"]["rkey"] == doc["atproto"]["rkey"]
    tapes = [r for a in accounts.values() for r in records(world, a.did, "computer.aesthetic.tape")]
    assert tapes and all(r["value"]["video"]["mimeType"] == "video/mp4" for r in tapes)
    assert all(r["value"]["thumbnail"]["mimeType"] == "image/jpeg" for r in tapes)

    heads = {a.did: head(world, a.did) for a in accounts.values()}
    links = link_snapshot(db)
    # the quick path: partitions that failed nothing are proven converged and not run at all
    quick = sync(world, full=False)
    skipped = {key for key, r in quick.items() if r.skipped}
    assert skipped == {key for key, r in results.items() if not r.outcome.failed}
    assert all(r.ok for r in quick.values())
    again = sync(world)
    for result in again.values():
        meta = result.outcome
        assert result.ok and result.check_passed
        assert (meta.created, meta.updated, meta.deleted) == (0, 0, 0), result.row()
        assert (meta.commits, meta.blobs_uploaded, meta.mongo_updates) == (0, 0, 0), result.row()
    assert {a.did: head(world, a.did) for a in accounts.values()} == heads
    assert link_snapshot(db) == links


def test_nuke_edit_and_dry_run(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "editor")
    ids = add_moods(db, sub, ["one", "two", "three", "four"])
    db["pieces"].insert_one(
        {
            "_id": ids[0],
            "user": sub,
            "slug": "wand",
            "when": db["moods"].find_one()["when"],
            "code": "w1",
            "bucket": "user-aesthetic-computer",
        }
    )
    first = sync(world, [handle], ["mood", "piece"])
    assert first[(handle, "mood")].outcome.created == 4

    db["moods"].update_one({"_id": ids[0]}, {"$set": {"mood": "one, edited"}})
    db["moods"].update_one({"_id": ids[1]}, {"$set": {"deleted": True}})
    db["pieces"].update_one({"_id": ids[0]}, {"$set": {"nuked": True}})
    db["moods"].delete_one({"_id": ids[2]})

    rev, links = head(world, did), link_snapshot(db)
    keys = [partition_key(handle, media) for media in ("mood", "piece")]
    before = latest_events(world, keys)
    dry = sync(world, [handle], ["mood", "piece"], dry_run=True)
    assert all(r.ok and r.check_passed is False for r in dry.values()), [r.error for r in dry.values()]
    planned = {(w["action"], w["reason"]) for r in dry.values() for w in r.row()["planned"]}
    assert planned == {
        ("update", "differs: mood"),
        ("delete", "item deleted"),
        ("delete", "not in MongoDB"),
        ("delete", "item nuked"),
    }
    assert head(world, did) == rev and link_snapshot(db) == links
    # a dry run records an observation per partition, never a materialization: nothing looks synced by it
    after = latest_events(world, keys)
    assert {k: m for k, (m, _) in after.items()} == {k: m for k, (m, _) in before.items()}
    assert all(after[k][1] is not None and after[k][1] != before[k][1] for k in keys), (before, after)

    done = sync(world, [handle], ["mood", "piece"])
    assert (done[(handle, "mood")].outcome.updated, done[(handle, "mood")].outcome.deleted) == (1, 2)
    assert done[(handle, "piece")].outcome.deleted == 1
    moods = {r["value"]["ref"]: r["value"]["mood"] for r in records(world, did, "computer.aesthetic.mood")}
    assert moods == {str(ids[0]): "one, edited", str(ids[3]): "four"}
    assert records(world, did, "computer.aesthetic.piece") == []
    assert "rkey" not in db["moods"].find_one({"_id": ids[1]})["atproto"]
    assert "rkey" not in db["pieces"].find_one({"_id": ids[0]})["atproto"]


def latest_events(world, keys: list[str]) -> dict[str, tuple[int | None, int | None]]:
    """Per partition of `atproto_records`: the storage ids of its latest materialization and observation."""
    out = {}
    for key in keys:
        records_filter = AssetRecordsFilter(asset_key=atproto_records.key, asset_partitions=[key])
        found = [
            fetch(records_filter, limit=1).records
            for fetch in (world.instance.fetch_materializations, world.instance.fetch_observations)
        ]
        out[key] = tuple(r[0].storage_id if r else None for r in found)
    return out


def test_adopts_platform_records_and_resolves_duplicates(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "adopter")
    ids = add_moods(db, sub, ["alpha", "beta", "gamma"])
    session = world.client.session(did, db["users"].find_one({"_id": sub})["atproto"]["password"])

    def create(value):
        body = json.dumps({"repo": did, "collection": "computer.aesthetic.mood", "record": value}).encode()
        return world.client.call("POST", "com.atproto.repo.createRecord", body=body, session=session)

    when = "2024-03-01T12:00:00.000Z"
    # the platform's oldest records: `mongoId` instead of `ref`; its bulk sync's `text` bug; three
    # duplicates of one mood after an interrupted run (same `when`), the second one linked in MongoDB
    old = create({"$type": "computer.aesthetic.mood", "mood": "alpha", "when": when, "mongoId": str(ids[0])})
    create(
        {
            "$type": "computer.aesthetic.mood",
            "text": "beta",
            "when": "2024-03-01T12:00:01.000Z",
            "ref": str(ids[1]),
        }
    )
    dups = [
        create(
            {
                "$type": "computer.aesthetic.mood",
                "mood": "gamma",
                "when": "2024-03-01T12:00:02.000Z",
                "ref": str(ids[2]),
            }
        )
        for _ in range(3)
    ]
    linked = dups[1]["uri"].rsplit("/", 1)[-1]
    db["moods"].update_one({"_id": ids[2]}, {"$set": {"atproto": {"rkey": linked, "uri": dups[1]["uri"]}}})

    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.ok and result.check_passed
    assert (result.outcome.created, result.outcome.updated, result.outcome.deleted) == (0, 2, 2)
    listed = records(world, did, "computer.aesthetic.mood")
    assert len(listed) == 3
    by_ref = {r["value"]["ref"]: r for r in listed}
    assert by_ref[str(ids[0])]["uri"] == old["uri"]  # adopted in place, not re-created
    assert by_ref[str(ids[1])]["value"]["mood"] == "beta" and "text" not in by_ref[str(ids[1])]["value"]
    assert by_ref[str(ids[2])]["uri"].endswith(linked)  # the duplicate MongoDB points to is the keeper
    assert db["moods"].find_one({"_id": ids[0]})["atproto"]["uri"] == old["uri"]


def test_writes_are_batched_by_count_and_by_size(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "batcher")
    add_moods(db, sub, [f"mood number {i}" for i in range(450)])
    source = "(wipe blue)\n" * 4000  # 48,000 characters
    db["kidlisp"].insert_many(
        [
            {
                "_id": __import__("bson").ObjectId(),
                "user": sub,
                "code": f"k{i}",
                "source": source,
                "when": __import__("datetime").datetime(2024, 5, 1, 0, 0, i),
            }
            for i in range(40)
        ]
    )
    results = sync(world, [handle], ["mood", "kidlisp"])
    assert results[(handle, "mood")].outcome.commits == 3  # 200 + 200 + 50
    assert results[(handle, "kidlisp")].outcome.commits == 3  # ~1.9 MB in bodies under 1 MB each
    assert len(records(world, did, "computer.aesthetic.mood")) == 450
    assert len(records(world, did, "computer.aesthetic.kidlisp")) == 40
    assert all(r.check_passed for r in results.values())


def test_invalid_items_are_reported_while_the_rest_syncs(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "broken")
    good = add_moods(db, sub, ["fine", "also fine"])
    bad = {
        "when as text": add_moods(db, sub, ["x"], when="2024-01-01")[0],
        "no when": add_moods(db, sub, ["y"], when=None)[0],
        "absurd when": add_moods(db, sub, ["z"], when=__import__("datetime").datetime(1970, 1, 2))[0],
        "too long": add_moods(db, sub, ["w" * 5001])[0],
        "missing text": add_moods(db, sub, [""])[0],
    }
    result = sync(world, [handle], ["mood"])[(handle, "mood")]
    assert result.ok and result.check_passed
    reasons = {f["ref"]: f["reason"] for f in result.row()["failed_items"]}
    assert reasons[str(bad["when as text"])] == "when is a str, not a date"
    assert reasons[str(bad["no when"])] == "when is missing"
    assert "outside" in reasons[str(bad["absurd when"])]
    assert reasons[str(bad["too long"])].startswith("invalid record: mood: maxLength 5000")
    assert reasons[str(bad["missing text"])] == "mood is missing"
    assert {r["value"]["ref"] for r in records(world, did, "computer.aesthetic.mood")} == {
        str(g) for g in good
    }

    strict = sync(world, [handle], ["mood"], strict=True)[(handle, "mood")]
    assert not strict.ok and "strict" in strict.error


def test_quick_path_runs_what_changed_and_anything_after_a_foreign_write(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "quick")
    ids = add_moods(db, sub, ["one", "two"])
    add_pieces(db, sub, ["quick-piece"])
    first = sync(world, [handle], ["mood", "piece", "tape"], full=False)
    assert not first[(handle, "mood")].skipped and not first[(handle, "piece")].skipped
    # nothing on either side (no tape in MongoDB, none on the PDS): no run, even the first time
    assert first[(handle, "tape")].skipped and first[(handle, "tape")].outcome.desired == 0
    assert all(r.skipped for r in sync(world, [handle], ["mood", "piece", "tape"], full=False).values())
    assert not sync(world, [handle], ["tape"], full=True)[(handle, "tape")].skipped

    db["moods"].update_one({"_id": ids[0]}, {"$set": {"mood": "one, edited"}})
    edited = sync(world, [handle], ["mood", "piece"], full=False)
    assert not edited[(handle, "mood")].skipped and edited[(handle, "mood")].outcome.updated == 1
    assert edited[(handle, "piece")].skipped

    # any write to the account outside a sync (here: another collection) voids every mark of the account
    create_other_record(world, db, sub, did)
    after = sync(world, [handle], ["mood", "piece"], full=False)
    assert not any(r.skipped for r in after.values())
    assert all(r.outcome.created == r.outcome.updated == r.outcome.deleted == 0 for r in after.values())
