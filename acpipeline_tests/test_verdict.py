"""The asset check's judgement (`core/verdict.py`), on listings written by hand: each way a PDS can diverge
from what MongoDB wants is named with its count and reason; what the sync leaves alone on purpose is not."""

from __future__ import annotations

from acpipeline.core.media import MEDIA
from acpipeline.core.plan import Existing
from acpipeline.core.verdict import judge

MOOD, TAPE, KIDLISP = MEDIA["mood"], MEDIA["tape"], MEDIA["kidlisp"]


def Listed(rkey: str, value: dict) -> Existing:  # noqa: N802 - reads as the record it builds
    return Existing(rkey, f"cid-{rkey}", value)


def mood(ref: str, text: str = "hi") -> dict:
    return {"$type": MOOD.nsid, "mood": text, "when": "2024-01-01T00:00:00.000Z", "ref": ref}


def test_a_pds_that_holds_exactly_the_desired_records_passes():
    desired = {"a": mood("a"), "b": mood("b")}
    verdict = judge(MOOD, desired, set(), [Listed("3k1", mood("a")), Listed("3k2", mood("b"))])
    assert verdict.passed and verdict.problems() == [] and (verdict.on_pds, verdict.desired) == (2, 2)


def test_each_divergence_is_counted_with_its_reason():
    desired = {"a": mood("a"), "b": mood("b"), "c": mood("c"), "d": mood("d")}
    listed = [
        Listed("3k1", mood("a")),
        Listed("3k2", mood("b")),
        Listed("3k3", mood("b")),  # a second record of b
        Listed("3k4", mood("c", "edited behind our back") | {"extra": 1}),
        Listed("3k5", mood("gone")),  # names an item MongoDB does not have
        Listed("3k6", {"$type": MOOD.nsid, "mood": "no ref"}),  # names nothing at all
    ]  # d: no record
    verdict = judge(MOOD, desired, set(), listed)
    assert not verdict.passed
    assert verdict.missing == ["d"]
    assert verdict.duplicated == {"b": ["3k2", "3k3"]}
    assert verdict.differing == {"c": ["extra", "mood"]}
    assert verdict.unexpected == ["3k5", "3k6"]
    assert verdict.problems() == [
        "d: no record on the PDS",
        "b: 2 records (3k2, 3k3)",
        "c: differs in extra, mood",
        "record 3k5: names no item MongoDB has",
        "record 3k6: names no item MongoDB has",
    ]


def test_a_failed_items_record_stays_and_a_missing_added_field_is_no_difference():
    desired = {"a": mood("a")}
    verdict = judge(MOOD, desired, {"f"}, [Listed("3k1", mood("a")), Listed("3k2", mood("f", "stale"))])
    assert verdict.passed, verdict.problems()
    want = {"$type": TAPE.nsid, "slug": "s", "code": "c", "zipUrl": "https://z", "ref": "t"}
    platform = {k: v for k, v in want.items() if k != "zipUrl"}  # the platform's tape records lack it
    assert judge(TAPE, {"t": want}, set(), [Listed("3k1", platform)]).passed
    # ... but a different value of it is a difference, and so is a field of ours that is missing.
    assert judge(TAPE, {"t": want}, set(), [Listed("3k1", want | {"zipUrl": "x"})]).differing == {
        "t": ["zipUrl"]
    }
    assert judge(TAPE, {"t": want}, set(), [Listed("3k1", platform | {"slug": None})]).differing == {
        "t": ["slug"]
    }
    assert judge(MOOD, desired, set(), [Listed("3k1", {"$type": MOOD.nsid, "ref": "a"})]).differing == {
        "a": ["mood", "when"]
    }


def test_records_mongodb_lacks_are_kept_for_kidlisp_and_unexpected_elsewhere():
    want = {
        "$type": KIDLISP.nsid,
        "code": "k1",
        "source": "(wipe)",
        "when": "2024-01-01T00:00:00.000Z",
        "ref": "a",
    }
    theirs = {"$type": KIDLISP.nsid, "code": "zz", "source": "(ink)", "when": "2024-01-01T00:00:00.000Z"}
    listed = [Listed("3k1", want), Listed("3k2", theirs), Listed("3k3", theirs | {"ref": "gone"})]
    kept = judge(KIDLISP, {"a": want}, set(), listed)
    assert kept.passed and kept.not_in_mongodb == 2 and kept.unexpected == []
    strict = type("Strict", (type(KIDLISP),), {"mongodb_is_whole_truth": True})()
    assert judge(strict, {"a": want}, set(), listed).unexpected == ["3k2", "3k3"]
