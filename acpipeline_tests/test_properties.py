"""Invariants of the pure core over generated inputs (Hypothesis): the planner over random listings and
MongoDB states, the record keys, and every media type's mapping of hostile documents into records.

The examples are generated, not written: `property_settings.examples` says how many (a small, reproducible
set by default; `ACPIPELINE_PROPERTY_EXAMPLES=N` for a longer search). Defects they found are kept as
`@example`s."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import litemongo
import pytest
from bson import ObjectId
from hypothesis import event, example, given
from hypothesis import strategies as st

from acpipeline.core.batches import batch_writes
from acpipeline.core.cid import blob_cid
from acpipeline.core.items import Blob, Derived, Item, Link
from acpipeline.core.lexicon import Lexicon, load_lexicons
from acpipeline.core.media import MEDIA, MediaRules, record_ref
from acpipeline.core.plan import Desired, Existing, Plan, build_desired, not_in_mongodb, plan_writes
from acpipeline.core.tid import clock_id_for, decode_tid, encode_tid, is_tid, item_tid, micros_of
from acpipeline.sync.extract import extract_owners

from .property_settings import examples
from .test_lexicons import _as_json_schema, published

RULES = list(MEDIA.values())
LEXICONS = load_lexicons()
PUBLISHED = published()
OWNER = "auth0|owner"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def blob(data: bytes, mime: str, size: int | None = None) -> Blob:
    return Blob(cid=blob_cid(data), mime_type=mime, size=len(data) if size is None else size, path="")


# ------------------------------------------------------------------------------------------------ TIDs

TID_CHARS = set("234567abcdefghijklmnopqrstuvwxyz")
TID_FIRST = set("234567abcdefghij")


def assert_tid(key: str) -> None:
    """The ATProto TID syntax, spelled out apart from the module's own regex."""
    assert len(key) == 13, key
    assert set(key) <= TID_CHARS and key[0] in TID_FIRST, key
    assert is_tid(key)


refs = st.one_of(
    st.binary(min_size=12, max_size=12).map(lambda b: str(ObjectId(b))),
    # `_id`s that are no ObjectId: strings (a lone surrogate too), or str() of anything else
    st.text(alphabet=st.characters(exclude_categories=()), min_size=1, max_size=40),
    st.integers().map(str),
)
# What a `when` can be once an item is built: 2000-01-01 UTC to a year ahead, milliseconds.
item_whens = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime.now() + timedelta(days=365), timezones=st.just(UTC)
).map(lambda w: w.replace(microsecond=w.microsecond // 1000 * 1000))


@examples(150)
@given(
    when=item_whens,
    ref=refs,
    later=st.integers(1, 10**12).map(lambda ms: timedelta(milliseconds=ms)),
    other=refs,
)
def test_item_tids_are_valid_deterministic_and_sort_like_their_time(
    when: datetime, ref: str, later: timedelta, other: str
) -> None:
    key = item_tid(when, ref)
    assert_tid(key)
    assert item_tid(when, ref) == key
    assert decode_tid(key) == (micros_of(when), clock_id_for(ref))
    assert key < item_tid(when + later, other)  # whatever the clock ids


@examples(150)
@given(
    items=st.lists(
        st.tuples(
            st.sampled_from([T0, T0 + timedelta(milliseconds=1), T0 + timedelta(microseconds=1)]), refs
        ),
        max_size=40,
        unique_by=lambda pair: pair[1],
    ),
    listed=st.lists(st.integers(0, 3000).map(lambda n: micros_of(T0) + n), max_size=20),
    clocks=st.lists(st.integers(0, 1023), min_size=20, max_size=20),
)
def test_item_tids_are_distinct_within_a_collection(
    items: list[tuple[datetime, str]], listed: list[int], clocks: list[int]
) -> None:
    """Items of one collection (many in one millisecond, clock ids that collide) next to records already
    listed: every key is new, and the same inputs in the same order give the same keys."""
    taken = {encode_tid(micros, clock) for micros, clock in zip(listed, clocks, strict=False)}

    def assign() -> list[str]:
        used, keys = set(taken), []
        for when, ref in items:
            key = item_tid(when, ref, used)
            assert_tid(key)
            assert key not in used
            micros, clock = decode_tid(key)
            assert clock == clock_id_for(ref) and micros >= micros_of(when)
            used.add(key)
            keys.append(key)
        return keys

    keys = assign()
    assert len(set(keys)) == len(keys)
    assert assign() == keys


@examples(150)
@given(
    when=st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(
        [timezone(timedelta(hours=h, minutes=m)) for h in (-12, -5, 0, 5, 14) for m in (0, 45)]
    ),
    ref=refs,
)
def test_one_instant_is_one_key_whatever_form_its_when_takes(
    when: datetime, zone: timezone, ref: str
) -> None:
    """A `when` read naive (UTC, as pymongo reads it without `tz_aware`), aware in UTC, or aware in any
    other zone names one instant: one item `when` and one key; below the millisecond nothing counts."""
    rules = MEDIA["mood"]
    forms = [when.replace(tzinfo=None), when, when.astimezone(zone)]
    items = [rules.normalise({"_id": ref, "user": OWNER, "mood": "x", "when": form}) for form in forms]
    assert {item.problem for item in items} == {None}
    assert len({item.when for item in items}) == 1
    assert len({item_tid(item.when, ref) for item in items if item.when}) == 1
    first = items[0].when
    assert first is not None and first.microsecond % 1000 == 0 and first.tzinfo == UTC


# ------------------------------------------------------------------------------------ the planner

CODES = ["a", "b", "c"]  # few natural keys, so records of different items collide on them
STALE_RKEYS = ["self", "3jzfcijpj2z2a", "not-a-tid", "22222222222222"]


def valid_fields(rules: MediaRules) -> st.SearchStrategy[dict[str, Any]]:
    """The fields a sound document of the type has, from small alphabets (natural keys collide)."""
    code, text = st.sampled_from(CODES), st.sampled_from(["x", "y", "🌈 z"])
    fields: dict[str, st.SearchStrategy[Any]] = {
        "painting": st.fixed_dictionaries(
            {
                "code": code,
                "slug": st.sampled_from(["s1", "s2:r2"]),
                "bucket": st.just("art-aesthetic-computer"),
            }
        ),
        "mood": st.fixed_dictionaries({"mood": text}),
        "piece": st.fixed_dictionaries({"slug": code}),
        "kidlisp": st.fixed_dictionaries({"code": code, "source": text}),
        "tape": st.fixed_dictionaries(
            {"code": st.sampled_from(["t1", "t2"]), "slug": code, "bucket": st.just("art-aesthetic-computer")}
        ),
        "news": st.fixed_dictionaries(
            {"title": text}, optional={"text": text, "url": st.just("https://example.com/a")}
        ),
    }[rules.name]
    return fields


def derived_for(rules: MediaRules, variant: int) -> Derived:
    """What the blob stage made: `variant` picks one of two blob contents, so a listed record can differ."""
    if rules.name == "painting":
        return Derived(
            blobs={"thumbnail": blob(b"png%d" % variant, "image/png")}, facts={"recording": variant == 1}
        )
    if rules.name == "tape":
        return Derived(
            blobs={"video": blob(b"mp4%d" % variant, "video/mp4"), "thumbnail": blob(b"jpg", "image/jpeg")}
        )
    return Derived()


def removed_fields(rules: MediaRules) -> dict[str, Any]:
    return {"status": "dead"} if rules.name == "news" else {rules.removed_flag: True}


def record_like(rules: MediaRules, item: Item, variant: int) -> dict[str, Any]:
    """A record the item could have on the PDS (`variant` 0 is what it wants today): for an item whose
    document is broken, a bare one with its `ref`."""
    if item.problem is not None:
        return {"$type": rules.nsid, "ref": item.ref, "when": "2020-01-01T00:00:00.000Z"}
    return rules.value(replace(item, removed=None), derived_for(rules, variant))


@st.composite
def states(draw: st.DrawFn) -> tuple[MediaRules, list[Item], list[Desired], list[Existing], set[str]]:
    """A partition's MongoDB items (sound, broken, removed, failing in the blob stage, linked to records
    that exist, are gone or belong to another item) and a listing of its collection (current, stale,
    duplicated, `mongoId`-only, without any ref, with a foreign ref, under foreign keys)."""
    rules = draw(st.sampled_from(RULES))
    count = draw(st.integers(0, 7))
    docs: list[dict[str, Any]] = []
    for n in range(count):
        doc: dict[str, Any] = {
            "_id": ObjectId(f"{n + 1:024x}"),
            "user": OWNER,
            "when": T0 + timedelta(milliseconds=draw(st.integers(0, 2))),
            **draw(valid_fields(rules)),
        }
        shape = draw(st.sampled_from(["sound", "sound", "sound", "removed", "broken"]))
        if shape == "removed":
            doc.update(removed_fields(rules))
        elif shape == "broken":
            del doc["when"]
        docs.append(doc)
    items = [rules.normalise(doc) for doc in docs]

    # The listing: rkeys unique, as the PDS lists them.
    listing: dict[str, dict[str, Any]] = {}
    for _ in range(draw(st.integers(0, 9))):
        kind = draw(st.sampled_from(["current", "stale", "mongoId", "bare", "foreign", "junk"]))
        owner = draw(st.sampled_from(items)) if items else None
        if owner is None or kind == "junk":
            value: dict[str, Any] = {"$type": rules.nsid, "note": draw(st.sampled_from(["x", "y"]))}
            value |= draw(st.sampled_from([{}, {"ref": 5}, {"ref": None}, {"mongoId": ["x"]}]))
        else:
            value = record_like(rules, owner, 0 if kind == "current" else 1)
            if kind == "stale" and owner.problem is None:
                value["when"] = "2001-01-01T00:00:00.000Z"
            elif kind == "mongoId":
                value["mongoId"] = value.pop("ref")
            elif kind == "bare":
                value.pop("ref")
            elif kind == "foreign":
                value["ref"] = f"{0xF0000 + len(listing):024x}"
            if rules.added_fields and draw(st.booleans()):  # as the platform wrote it, without our fields
                for name in rules.added_fields:
                    value.pop(name, None)
        where = draw(st.sampled_from(["own", "random", "foreign"]))
        if where == "own" and owner is not None and owner.when is not None:
            rkey = item_tid(owner.when, owner.ref)
        elif where == "foreign":
            rkey = draw(st.sampled_from(STALE_RKEYS))
        else:
            rkey = encode_tid(micros_of(T0) + draw(st.integers(0, 4000)), draw(st.integers(0, 1023)))
        listing.setdefault(rkey, value)

    # MongoDB's links: to a listed record (its own or another item's), to one that is gone, or none.
    linked = []
    for item, doc in zip(items, docs, strict=True):
        target = draw(st.sampled_from(["none", "listed", "gone", "elsewhere"]))
        if target == "listed" and listing:
            rkey = draw(st.sampled_from(sorted(listing)))
        elif target == "gone":
            rkey = encode_tid(micros_of(T0) + 999_999, 7)
        elif target == "elsewhere" and listing:
            rkey = draw(st.sampled_from(sorted(listing)))
            doc = {**doc, "atproto": {"rkey": rkey, "uri": f"at://did:plc:x/app.bsky.feed.post/{rkey}"}}
            linked.append(rules.normalise(doc))
            continue
        else:
            linked.append(item)
            continue
        uri = f"at://did:plc:x/{rules.nsid}/{rkey}"
        linked.append(rules.normalise({**doc, "atproto": {"rkey": rkey, "uri": uri, "cid": "c"}}))
    items = linked

    # The blob stage: a sound item may fail there (a missing image, a broken ZIP) and keep its record.
    derived = {
        item.ref: Derived(problem="storage answered 404")
        if draw(st.integers(0, 5)) == 0
        else derived_for(rules, 0)
        for item in items
    }
    desired, failed = build_desired(rules, items, derived, LEXICONS[rules.nsid])
    existing = [Existing(rkey, f"cid-{rkey}", value) for rkey, value in listing.items()]
    return rules, items, desired, existing, {ref for ref, _ in failed}


def apply(rules: MediaRules, plan: Plan, existing: list[Existing]) -> dict[str, dict[str, Any]]:
    """The plan applied as the record stage sends it (applyWrites batches, each all or nothing): every
    write must apply against the state it meets."""
    state = {record.rkey: record.value for record in existing}
    sent = []
    for batch in batch_writes(rules.nsid, plan.writes):
        after = dict(state)
        for write in batch:
            sent.append(write)
            if write.action == "create":
                assert write.rkey not in after, f"create of an existing record {write.rkey}"
                assert is_tid(write.rkey)
                assert write.value is not None
                after[write.rkey] = write.value
            elif write.action == "update":
                assert write.rkey in after, f"update of a missing record {write.rkey}"
                assert write.value is not None
                after[write.rkey] = write.value
            else:
                assert write.rkey in after, f"delete of a missing record {write.rkey}"
                del after[write.rkey]
        state = after
    assert sent == plan.writes
    return state


def holds(rules: MediaRules, want: dict[str, Any], have: dict[str, Any]) -> bool:
    """`have` is `want`, but for the fields we add only when we write anyway (platform records lack them)."""
    return all(
        want.get(k) == have.get(k) or (k in rules.added_fields and k not in have)
        for k in set(want) | set(have)
    )


def could_be_of(rules: MediaRules, item: Item, rkey: str, value: dict[str, Any], refs: set[str]) -> bool:
    """Whether a listed record may be the item's: it names the item, or it names no item of MongoDB and
    MongoDB links the item to it, or it carries the item's natural key."""
    ref = record_ref(value)
    if ref == item.ref:
        return True
    if ref in refs:
        return False
    if item.link is not None and item.link.rkey == rkey:
        return True
    mine = rules.item_natural_key(item) if item.problem is None else None
    return mine is not None and rules.natural_key(value) == mine


def already_has(rules: MediaRules, item: Item, rkey: str, value: dict[str, Any], items: list[Item]) -> bool:
    """Whether a listed record is, beyond doubt, the item's: it names the item; or it names no item of
    MongoDB, and MongoDB links the item (and only it) to the record, or, linked to no item, it carries a
    natural key that only this item has."""
    ref = record_ref(value)
    if ref == item.ref:
        return True
    if ref in {i.ref for i in items}:
        return False
    linked = [i for i in items if i.link is not None and i.link.rkey == rkey]
    if linked:
        return linked == [item]
    mine = rules.item_natural_key(item)
    sharing = [i for i in items if i.problem is None and rules.item_natural_key(i) == mine]
    return mine is not None and sharing == [item] and rules.natural_key(value) == mine


@examples(150)
@given(state=states())
def test_the_plan_applies_and_converges(
    state: tuple[MediaRules, list[Item], list[Desired], list[Existing], set[str]],
) -> None:
    rules, items, desired, existing, failed = state
    plan = plan_writes(rules, desired, existing, items)
    for write in plan.writes:  # what the search reached (pytest --hypothesis-show-statistics)
        event(f"{write.action}: {write.reason.split(' ')[0]}")
    event(f"live items that failed: {min(2, len(failed))}")
    after = apply(rules, plan, existing)
    listed = {record.rkey: record.value for record in existing}
    refs = {item.ref for item in items}
    wanted = {d.item.ref: d for d in desired}

    # One record per desired item, holding the desired value, where the plan says it kept it.
    per_ref = Counter(record_ref(value) for value in after.values())
    for ref, want in wanted.items():
        assert per_ref[ref] == 1, (ref, per_ref[ref])
        assert record_ref(after[plan.kept[ref]]) == ref
        assert holds(rules, want.value, after[plan.kept[ref]])

    # A live item that failed keeps every record that names it, as it was.
    live_failed = [i for i in items if i.wanted and i.ref not in wanted]
    assert {i.ref for i in live_failed} >= failed
    for item in live_failed:
        for rkey, value in listed.items():
            if record_ref(value) == item.ref:
                assert after.get(rkey) == value, (item.ref, rkey)

    # Nothing else is left: every other record is one a live failed item may own, or (where MongoDB is not
    # the type's whole truth) one that stands for no item, which the plan keeps and counts; both untouched.
    kept = set(plan.not_in_mongodb)
    assert not kept or not rules.mongodb_is_whole_truth
    assert {r.rkey for r in not_in_mongodb(rules, existing, items)} >= kept
    for rkey, value in after.items():
        if record_ref(value) in wanted:
            continue
        assert listed.get(rkey) == value, rkey
        assert rkey in kept or any(could_be_of(rules, i, rkey, value, refs) for i in live_failed), (
            rkey,
            value,
        )
    # Where MongoDB is not the whole truth, only a removed item or a duplicate deletes a record.
    if not rules.mongodb_is_whole_truth:
        for write in plan.writes:
            if write.action == "delete":
                assert write.reason.startswith(("item ", "duplicate of")), write

    # No create for an item that already has a record.
    for write in plan.writes:
        if write.action == "create":
            item = wanted[write.ref or ""].item
            for rkey, value in listed.items():
                assert not already_has(rules, item, rkey, value, items), (write, rkey, value)

    # Planning again from the new listing writes nothing: with MongoDB's old links, and with the new ones.
    relisted = [Existing(rkey, f"cid2-{rkey}", value) for rkey, value in after.items()]
    assert plan_writes(rules, desired, relisted, items).is_empty
    relinked = [replace(i, link=Link(plan.kept[i.ref])) if i.ref in plan.kept else i for i in items]
    desired_relinked = [Desired(next(i for i in relinked if i.ref == d.item.ref), d.value) for d in desired]
    again = plan_writes(rules, desired_relinked, relisted, relinked)
    assert again.is_empty and again.kept == plan.kept


# ----------------------------------------------------------------------------- the record mapping

ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew, right to left
    "e\u0301\u0301\u0301\u0301",  # stacked combining marks
    "\u200d\ufe0f",
    "\ud800",  # a lone surrogate: no UTF-8 encoding exists
    "ok \udfff",
    "\ufffd",  # what the MongoDB client makes of invalid UTF-8
    "🌈",
    "\U0010ffff",
    "line\nbreak\ttab",
    "a3b",
    "https://example.com/a?b=c#d",
    "http://[::1",
    "javascript:alert(1)",
]
LIMITS = [10, 11, 24, 25, 100, 101, 128, 129, 300, 301, 512, 5000, 5001, 10000, 10001, 50000, 50001]
# Around each limit of the lexicons, in 1-byte characters and in 2-, 3- and 4-byte ones.
long_text = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["x", "é", "🌈", "e\u0301", "\u202e", "\x00"]),
    st.sampled_from(LIMITS + [n // 4 for n in LIMITS] + [n // 2 for n in LIMITS]),
)
any_text = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),
    long_text,
    st.lists(st.sampled_from(ODD_TEXT), max_size=6).map("".join),
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.just(date(2024, 1, 1)),
)
ZONES = [
    UTC,
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
    timezone(timedelta(hours=5, minutes=45)),
    timezone(timedelta(hours=23, minutes=59)),
    timezone(-timedelta(hours=23, minutes=59)),
]
NOW = datetime.now(UTC)
EXTREME_WHENS = [
    datetime.min,
    datetime.max,
    *(datetime.min.replace(tzinfo=zone) for zone in ZONES),
    *(datetime.max.replace(tzinfo=zone) for zone in ZONES),
    datetime(2000, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),
    NOW + timedelta(days=365),
    NOW + timedelta(days=367),
    datetime(2255, 6, 5, tzinfo=UTC),
]
any_when = st.one_of(
    st.sampled_from(EXTREME_WHENS),
    st.datetimes(),  # naive, year 1 to 9999
    st.datetimes(timezones=st.sampled_from(ZONES)),
    st.datetimes(
        min_value=datetime(1999, 12, 30), max_value=datetime(2028, 1, 1), timezones=st.sampled_from(ZONES)
    ),
    st.sampled_from(["2024-01-01T00:00:00.000Z", "yesterday", ""]),
    st.integers(min_value=-(2**63), max_value=2**63),  # epoch milliseconds, as some exports hold them
    wrong_types,
)
any_value = st.one_of(any_text, wrong_types)

# Per type: the fields its documents carry, with a plausible value or anything at all.
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "painting": {
        "code": st.sampled_from(["a3b", "zz9"]),
        "slug": st.just("04i9I27L:LazA65bb"),
        "bucket": st.just("art-aesthetic-computer"),
    },
    "mood": {"mood": st.just("feeling 🌈")},
    "piece": {"slug": st.just("wand")},
    "kidlisp": {"code": st.just("k1"), "source": st.just("(wipe blue)")},
    "tape": {
        "code": st.just("t1"),
        "slug": st.just("wand-1729177200000"),
        "bucket": st.just("art-aesthetic-computer"),
        "kind": st.sampled_from(["mp4", "zip"]),
        "mp4Status": st.sampled_from(["complete", "pending", "oven-failed"]),
        "mp4Url": st.just("https://at-blobs.aesthetic.computer/tapes/t1.mp4"),
        "thumbnailUrl": st.just("https://at-blobs.aesthetic.computer/tapes/t1-thumb.jpg"),
    },
    "news": {
        "title": st.just("a headline"),
        "text": st.just("a body"),
        "url": st.sampled_from(
            ["https://example.com/a", "example.com", "https://exa mple.com", "http://x:99999/"]
        ),
        "external": st.sampled_from([None, "bsky"]),
        "status": st.sampled_from(["live", "dead"]),
    },
}


@st.composite
def documents(draw: st.DrawFn, rules: MediaRules) -> dict[str, Any]:
    """A document of the type's collection: most fields plausible, a few odd, of the wrong type, or
    missing (`when` then at an extreme: year 1, year 9999, naive, ahead of or behind UTC, text, a number)."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "_id": st.binary(min_size=12, max_size=12).map(ObjectId),
        "user": st.just(OWNER),
        "when": st.datetimes(
            min_value=datetime(2001, 1, 1), max_value=datetime(2025, 1, 1), timezones=st.sampled_from(ZONES)
        ),
        rules.removed_flag: st.sampled_from([False, True, "dead", "live"]),
        "atproto": st.fixed_dictionaries(
            {"rkey": st.just("3khuwc44c22xi")},
            optional={"uri": st.just(f"at://did:plc:x/{rules.nsid}/3khuwc44c22xi"), "cid": st.just("c")},
        ),
        **FIELDS[rules.name],
    }
    damaged = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3))
    doc: dict[str, Any] = {}
    for name, plausible in fields.items():
        if name not in damaged:
            doc[name] = draw(plausible)
        elif name == "atproto":
            doc[name] = draw(
                st.fixed_dictionaries({"rkey": any_value}, optional={"uri": any_value, "cid": any_value})
                | any_value
            )
        elif draw(st.booleans()):
            doc[name] = draw(any_when if name == "when" else any_value)
    return doc


def derived_blobs(rules: MediaRules) -> st.SearchStrategy[Derived]:
    sizes = st.sampled_from([0, 1, 9000, 1_048_576, 1_048_577, 52_428_800, 52_428_801])
    blobs = {
        "painting": {
            "thumbnail": st.builds(blob, st.just(b"png"), st.sampled_from(["image/png", "image/gif"]), sizes)
        },
        "tape": {
            "video": st.builds(blob, st.just(b"mp4"), st.just("video/mp4"), sizes),
            "thumbnail": st.builds(blob, st.just(b"jpg"), st.just("image/jpeg"), sizes),
        },
    }.get(rules.name, {})
    return st.builds(
        Derived,
        blobs=st.fixed_dictionaries({}, optional=blobs),
        facts=st.fixed_dictionaries({}, optional={"recording": st.booleans()}),
    ) | st.just(Derived(problem="image cannot be decoded"))


PUBLISHED_SCHEMAS = {nsid: _as_json_schema(doc) for nsid, doc in PUBLISHED.items()}
PUBLISHED_LEXICONS = {
    nsid: Lexicon(nsid, "tid", doc["defs"]["main"]["record"]) for nsid, doc in PUBLISHED.items()
}


@st.composite
def mapped(draw: st.DrawFn) -> tuple[MediaRules, dict[str, Any], Derived]:
    rules = draw(st.sampled_from(RULES))
    return rules, draw(documents(rules)), draw(derived_blobs(rules))


def found(media: str, **fields: Any) -> tuple[MediaRules, dict[str, Any], Derived]:
    """A document the search found to break the mapping, kept as a regression example."""
    doc = {"_id": ObjectId(f"{1:024x}"), "user": OWNER, "when": T0, **fields}
    return MEDIA[media], doc, Derived()


@examples(200)
# Found: a `when` of year 1 ahead of UTC, or of year 9999 behind it, raised OverflowError.
@example(case=found("mood", mood="x", when=datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))))
@example(case=found("piece", slug="wand", when=datetime.max.replace(tzinfo=timezone(timedelta(hours=-12)))))
# Found: an `_id` string holding a lone surrogate had no key (UnicodeEncodeError in the clock id).
@example(case=found("mood", mood="x", _id="\ud800"))
# Found: a link whose `uri` is no string (here `True`) raised TypeError.
@example(case=found("mood", mood="x", atproto={"rkey": "3khuwc44c22xi", "uri": True}))
@given(case=mapped())
def test_every_document_maps_to_a_valid_record_or_a_failed_item_with_a_reason(
    case: tuple[MediaRules, dict[str, Any], Derived],
) -> None:
    """As the sync does it: the extract normalises the platform's own documents into items, the record
    stage builds each wanted item's record and checks it against our lexicon. Nothing raises; a record
    that passes ours passes the platform's published lexicon too."""
    rules, doc, derived = case
    if not rules.is_own_content(doc):
        event("not ours")
        return
    item = rules.normalise(doc)
    if item.when is not None:  # any `when` and `_id` a document can hold that makes an item: a valid key
        assert_tid(item_tid(item.when, item.ref))
    desired, failed = build_desired(rules, [item], {item.ref: derived}, LEXICONS[rules.nsid])
    if not item.wanted:
        event("removed")
        assert desired == [] and failed == []
        return
    assert len(desired) + len(failed) == 1
    if failed:
        [(ref, reason)] = failed
        event(f"failed: {reason.split(' ')[0]}")
        assert ref == item.ref
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason
        json.dumps(reason)  # shown in Dagster metadata and the CLI's JSON
        return
    event(f"record: {rules.name}")
    value = desired[0].value
    assert value["$type"] == rules.nsid
    assert PUBLISHED_LEXICONS[rules.nsid].violations(value) == []
    jsonschema.validate(value, PUBLISHED_SCHEMAS[rules.nsid])
    value["when"].encode("ascii")
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # what applyWrites sends


# ---------------------------------------------------------------------------------- the extract

OTHER = "auth0|other"
USERS = [OWNER, OTHER, "", None, [OWNER], [OWNER, OTHER], [OTHER], 5, True, {"sub": OWNER}]


@pytest.fixture(scope="module")
def store() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="acpipeline-properties-") as folder:
        client = litemongo.connect(str(Path(folder) / "mongo"), tz_aware=True)
        yield client["aesthetic"]
        client.close()


@examples(30)
@example(rules=MEDIA["mood"], users=[[OWNER], OWNER])  # found: a list `user` raised TypeError (unhashable)
@given(
    rules=st.sampled_from(RULES),
    users=st.lists(st.sampled_from(USERS) | st.just("missing"), max_size=6),
)
def test_the_extract_takes_exactly_each_owners_documents(
    store: Any, rules: MediaRules, users: list[Any]
) -> None:
    """The owner's items are the documents whose `user` is the owner, whichever way the store is asked
    (one owner, or many at once); a `user` of another type (an array holding the owner) is nobody's."""
    collection = store[rules.collection]
    collection.delete_many({})
    docs = []
    for n, user in enumerate(users):
        doc = {"_id": ObjectId(f"{n + 1:024x}"), "when": T0, **({} if user == "missing" else {"user": user})}
        docs.append(doc)
    if docs:
        collection.insert_many([dict(doc) for doc in docs])
    anonymous = rules.may_be_anonymous
    expected = {
        OWNER: sorted(str(d["_id"]) for d in docs if d.get("user") == OWNER),
        None: sorted(str(d["_id"]) for d in docs if anonymous and d.get("user") in (None, "")),
    }
    for owners in ([OWNER], [None], [OWNER, OTHER, None]):
        found = extract_owners(store, rules, owners)
        for owner in owners:
            if owner in expected:
                assert sorted(item.ref for item in found[owner]) == expected[owner], (owners, owner)
