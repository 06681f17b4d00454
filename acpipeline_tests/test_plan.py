"""The diff planner: creates, updates, deletes, adoption and duplicates, from a listing."""

from datetime import UTC, datetime, timedelta

from bson import ObjectId

from acpipeline.core.batches import batch_writes, encode_body, write_op
from acpipeline.core.items import Blob, Derived
from acpipeline.core.media import MEDIA
from acpipeline.core.media.base import AC
from acpipeline.core.plan import Desired, Existing, Write, differences, plan_writes
from acpipeline.core.tid import decode_tid, encode_tid, is_tid, micros_of

MOOD = MEDIA["mood"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def mood_doc(i: int, **extra):
    return {
        "_id": ObjectId(f"{i:024x}"),
        "user": "auth0|u",
        "mood": f"mood {i}",
        "when": T0 + timedelta(minutes=i),
        **extra,
    }


def build(docs):
    items = [MOOD.normalise(d) for d in docs]
    desired = [Desired(i, MOOD.value(i, Derived())) for i in items if i.wanted and not i.problem]
    return items, desired


def listed(rkey, value):
    return Existing(rkey=rkey, cid=f"cid-{rkey}", value=value)


def random_tid(n: int) -> str:
    return encode_tid(1_650_000_000_000_000 + n, 5)


def test_empty_pds_creates_everything_with_deterministic_keys():
    items, desired = build([mood_doc(i) for i in range(3)])
    plan = plan_writes(MOOD, desired, [], items)
    assert [w.action for w in plan.writes] == ["create"] * 3
    for write, item in zip(plan.writes, items, strict=True):
        assert is_tid(write.rkey) and decode_tid(write.rkey)[0] == micros_of(item.when)
    again = plan_writes(MOOD, desired, [], items)
    assert [w.rkey for w in again.writes] == [w.rkey for w in plan.writes]


def test_converged_state_plans_nothing():
    items, desired = build([mood_doc(i) for i in range(3)])
    existing = [listed(random_tid(i), d.value) for i, d in enumerate(desired)]
    assert plan_writes(MOOD, desired, existing, items).is_empty


def test_nuked_deleted_and_gone_items_are_deleted_with_reasons():
    docs = [mood_doc(0), mood_doc(1, deleted=True)]
    items, desired = build(docs)
    gone_value = {"$type": MOOD.nsid, "mood": "gone", "when": "2024-01-01T00:00:00.000Z", "ref": f"{99:024x}"}
    existing = [
        listed("3kaaaaaaaaaa2", desired[0].value),
        listed(
            "3kaaaaaaaaab2",
            MOOD.value(items[1].__class__(**{**items[1].__dict__, "removed": None}), Derived()),
        ),
        listed("3kaaaaaaaaac2", gone_value),
    ]
    plan = plan_writes(MOOD, desired, existing, items)
    reasons = {w.rkey: (w.action, w.reason) for w in plan.writes}
    assert reasons == {
        "3kaaaaaaaaab2": ("delete", "item deleted"),
        "3kaaaaaaaaac2": ("delete", "not in MongoDB"),
    }


def test_edit_updates_in_place_and_names_the_field():
    items, desired = build([mood_doc(0)])
    old = {**desired[0].value, "mood": "before the edit"}
    plan = plan_writes(MOOD, desired, [listed("3kaaaaaaaaaa2", old)], items)
    assert [(w.action, w.rkey, w.reason) for w in plan.writes] == [
        ("update", "3kaaaaaaaaaa2", "differs: mood")
    ]


def test_adopts_platform_records_by_ref_and_mongo_id():
    items, desired = build([mood_doc(0), mood_doc(1)])
    platform_text = {
        "$type": MOOD.nsid,
        "text": "mood 0",
        "when": "x",
        "ref": items[0].ref,
    }  # the old `text` bug
    old_style = {k: v for k, v in desired[1].value.items() if k != "ref"} | {"mongoId": items[1].ref}
    plan = plan_writes(
        MOOD, desired, [listed(random_tid(1), platform_text), listed(random_tid(2), old_style)], items
    )
    assert sorted((w.action, w.rkey) for w in plan.writes) == [
        ("update", random_tid(1)),
        ("update", random_tid(2)),
    ]
    assert plan.count("create") == 0


def test_duplicates_keep_the_linked_one_else_the_oldest():
    uri = f"at://did:plc:x/computer.aesthetic.mood/{random_tid(5)}"
    linked = mood_doc(0, atproto={"rkey": random_tid(5), "uri": uri, "cid": "c"})
    items, desired = build([linked, mood_doc(1)])
    value0, value1 = desired[0].value, desired[1].value
    existing = [listed(random_tid(n), value0) for n in (3, 5, 7)] + [
        listed(random_tid(n), value1) for n in (9, 4)
    ]
    plan = plan_writes(MOOD, desired, existing, items)
    deleted = sorted(w.rkey for w in plan.writes if w.action == "delete")
    assert deleted == sorted([random_tid(3), random_tid(7), random_tid(9)])
    assert plan.kept == {items[0].ref: random_tid(5), items[1].ref: random_tid(4)}
    assert all(w.reason.startswith("duplicate of") for w in plan.writes)


def test_failed_item_keeps_its_record():
    items, desired = build([mood_doc(0)])
    plan = plan_writes(MOOD, [], [listed("3kaaaaaaaaaa2", desired[0].value)], items)
    assert plan.is_empty


def test_bad_document_is_not_desired_and_not_deleted():
    docs = [mood_doc(0), {**mood_doc(1), "when": "2024-01-01"}]
    items, desired = build(docs)
    assert items[1].problem == "when is a str, not a date"
    existing = [listed("3kaaaaaaaaab2", {"$type": MOOD.nsid, "mood": "mood 1", "ref": items[1].ref})]
    plan = plan_writes(MOOD, desired, existing, items)
    assert [w.action for w in plan.writes] == ["create"]


def test_same_microsecond_items_get_distinct_keys():
    docs = [mood_doc(i) | {"when": T0} for i in range(50)]
    items, desired = build(docs)
    keys = [w.rkey for w in plan_writes(MOOD, desired, [], items).writes]
    assert len(set(keys)) == 50


def test_batches_split_at_200_writes_and_at_the_byte_limit():
    writes = [Write("create", random_tid(i), "new", None, {"mood": "x"}) for i in range(450)]
    assert [len(b) for b in batch_writes(MOOD.nsid, writes)] == [200, 200, 50]
    big = [Write("create", random_tid(i), "new", None, {"source": "y" * 50_000}) for i in range(45)]
    batches = list(batch_writes("computer.aesthetic.kidlisp", big))
    assert [len(b) for b in batches] == [17, 17, 11]
    for batch in batches:
        body = encode_body({"repo": "did:plc:x", "writes": [write_op("c", w) for w in batch]})
        assert len(body) < 1_000_000


def test_invalid_utf8_read_as_replacement_characters_is_a_failed_item():
    item = MOOD.normalise(mood_doc(0) | {"mood": "broken \ufffd bytes"})
    assert item.problem == "mood holds invalid UTF-8 (read as U+FFFD at 7)"


def test_a_link_to_another_collections_record_is_not_ours():
    """A news post copied from Bluesky links an `app.bsky.feed.post`: never read as one of our records."""
    foreign = mood_doc(
        0, atproto={"rkey": random_tid(5), "uri": f"at://did:plc:x/app.bsky.feed.post/{random_tid(5)}"}
    )
    ours = mood_doc(
        1, atproto={"rkey": random_tid(6), "uri": f"at://did:plc:x/computer.aesthetic.mood/{random_tid(6)}"}
    )
    bare = mood_doc(2, atproto={"rkey": random_tid(7), "did": "did:plc:x"})
    items, _ = build([foreign, ours, bare])
    assert [i.link.rkey if i.link else None for i in items] == [None, random_tid(6), random_tid(7)]


def test_a_record_lacking_only_fields_we_add_is_adopted_as_it_is():
    """The platform's tape records have no `zipUrl` and no `thumbnail`: same video, nothing to write."""
    tape = MEDIA["tape"]
    doc = {"_id": ObjectId(), "user": "auth0|u", "slug": "t-1", "code": "t1", "when": T0, "bucket": "b"}
    item = tape.normalise(doc)
    video = Blob("bafkreivideo", "video/mp4", 1000, "/nowhere")
    thumbnail = Blob("bafkreithumb", "image/jpeg", 100, "/nowhere")
    want = tape.value(item, Derived(blobs={"video": video, "thumbnail": thumbnail}))
    assert want["zipUrl"] == "https://aesthetic.computer/media/tapes/t1"
    platform = {k: v for k, v in want.items() if k not in ("zipUrl", "thumbnail")}
    assert plan_writes(tape, [Desired(item, want)], [listed(random_tid(1), platform)], [item]).is_empty
    assert differences(tape, want, platform) == []
    # present on both sides but different is still an update, as is a different video
    old_link = platform | {"zipUrl": "https://user-aesthetic-computer.example/auth0%7Cu/t-1.zip"}
    other_video = platform | {"video": {**want["video"], "ref": {"$link": "bafkreiother"}}}
    for have, field in ((old_link, "zipUrl"), (other_video, "video")):
        [write] = plan_writes(tape, [Desired(item, want)], [listed(random_tid(1), have)], [item]).writes
        assert (write.action, write.reason) == ("update", f"differs: {field}")
    # the planner's rule is the check's: moods add nothing, so a missing field there is a difference
    assert differences(MOOD, {"mood": "x", "when": "w"}, {"mood": "x"}) == ["when"]


# -- where MongoDB is not the whole truth (KidLisp's own store) -------------------------------------------

KIDLISP = MEDIA["kidlisp"]


def kidlisp_doc(i: int, **extra):
    """A row as the platform's projection writes it: no `hits`, no `atproto`."""
    source = f"(wipe {i})"
    when = T0 + timedelta(minutes=i)
    return {
        "_id": ObjectId(f"{i:024x}"),
        "code": f"k{i}",
        "source": source,
        "hash": "h",
        "when": when,
        **extra,
    }


def platform_kidlisp(code: str, source: str, when: str) -> dict:
    """A record the platform wrote from its own store: no `ref`."""
    return {"$type": KIDLISP.nsid, "code": code, "source": source, "acUrl": f"{AC}/${code}", "when": when}


def test_every_type_declares_whether_mongodb_is_its_whole_truth():
    kept = sorted(name for name, rules in MEDIA.items() if not rules.mongodb_is_whole_truth)
    assert kept == ["kidlisp"]


def test_kidlisp_records_mongodb_lacks_are_kept_and_counted_and_only_nuked_rows_delete():
    rows = [kidlisp_doc(0), kidlisp_doc(1, nuked=True)]
    items = [KIDLISP.normalise(d) for d in rows]
    desired = [Desired(i, KIDLISP.value(i, Derived())) for i in items if i.wanted]
    theirs = platform_kidlisp("zz9", "(ink red)", "2024-02-01T00:00:00.000Z")  # in the store only
    gone = {**KIDLISP.value(KIDLISP.normalise(kidlisp_doc(7)), Derived())}  # ours once, its row is gone
    existing = [
        listed(random_tid(1), desired[0].value),
        listed(
            random_tid(2),
            KIDLISP.value(items[1].__class__(**{**items[1].__dict__, "removed": None}), Derived()),
        ),
        listed(random_tid(3), theirs),
        listed(random_tid(4), gone),
    ]
    plan = plan_writes(KIDLISP, desired, existing, items)
    assert [(w.action, w.rkey, w.reason) for w in plan.writes] == [("delete", random_tid(2), "item nuked")]
    assert sorted(plan.not_in_mongodb) == [random_tid(3), random_tid(4)]
    # The same listing for a type whose MongoDB is the whole truth deletes both orphans.
    whole = type("WholeKidlisp", (type(KIDLISP),), {"mongodb_is_whole_truth": True})()
    deleted = {w.rkey for w in plan_writes(whole, desired, existing, items).writes}
    assert deleted == {random_tid(2), random_tid(3), random_tid(4)}


def test_a_platform_kidlisp_record_of_a_projection_row_is_adopted_by_its_code():
    row = kidlisp_doc(0)
    items = [KIDLISP.normalise(row)]
    desired = [Desired(items[0], KIDLISP.value(items[0], Derived()))]
    value = desired[0].value
    theirs = platform_kidlisp(value["code"], value["source"], value["when"])
    plan = plan_writes(KIDLISP, desired, [listed(random_tid(9), theirs)], items)
    # One record, the platform's rkey kept: `ref` (which the platform's lexicon requires) is written in.
    assert [(w.action, w.rkey, w.reason) for w in plan.writes] == [("update", random_tid(9), "differs: ref")]
    assert plan.kept == {items[0].ref: random_tid(9)} and not plan.not_in_mongodb


def test_a_tape_linked_only_under_at_as_the_platform_links_it_is_claimed_by_that_link():
    tape = MEDIA["tape"]
    rkey = random_tid(4)
    link = {"rkey": rkey, "uri": f"at://did:plc:x/{tape.nsid}/{rkey}", "cid": "bafy"}
    doc = {"_id": ObjectId(), "code": "t1", "slug": "s1", "bucket": "b", "when": T0, "at": link}
    item = tape.normalise(doc)
    assert item.link is not None and (item.link.rkey, item.link.uri, item.link.cid) == (
        rkey,
        link["uri"],
        "bafy",
    )
    # `atproto` wins where both are set; a type whose link is not mirrored never reads `at`.
    assert tape.normalise({**doc, "atproto": {"rkey": random_tid(5)}}).link.rkey == random_tid(5)
    assert MOOD.normalise({**mood_doc(0), "at": link}).link is None
    # Claimed by it: a record under that rkey that lacks `ref` and has another slug is not a second one.
    desired = [Desired(item, tape.value(item, Derived()))]
    theirs = {k: v for k, v in desired[0].value.items() if k not in ("ref", "slug")} | {"slug": "other"}
    plan = plan_writes(tape, desired, [listed(rkey, theirs)], [item])
    assert [(w.action, w.rkey) for w in plan.writes] == [("update", rkey)] and plan.kept == {item.ref: rkey}
