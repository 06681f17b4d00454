"""Our lexicons accept what the platform's published ones accept, and every record we build passes both."""

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from bson import ObjectId

from acpipeline.core.cid import blob_ref
from acpipeline.core.items import Blob, Derived
from acpipeline.core.lexicon import Lexicon, load_lexicons
from acpipeline.core.media import MEDIA

PUBLISHED = Path(__file__).resolve().parent / "data" / "published_lexicons"
OURS = Path(__file__).resolve().parents[1] / "lexicons" / "computer" / "aesthetic"


def published() -> dict[str, dict]:
    # The five, and news, which the platform keeps apart from them.
    docs = [json.loads(p.read_text()) for p in sorted(PUBLISHED.glob("*/*.json"))]
    if len(docs) != len(MEDIA):
        pytest.fail(f"the platform's {len(MEDIA)} published lexicons are expected at {PUBLISHED}")
    return {doc["id"]: doc for doc in docs}


def test_same_nsids_keys_and_no_tighter_rules():
    ours = load_lexicons()
    for nsid, theirs in published().items():
        assert nsid in ours
        mine = ours[nsid]
        their_main = theirs["defs"]["main"]
        assert mine.key == their_main["key"] == "tid"
        assert set(mine.record["required"]) <= set(their_main["record"]["required"]), nsid
        for name, prop in their_main["record"]["properties"].items():
            my_prop = mine.record["properties"][name]
            assert my_prop["type"] == prop["type"]
            for limit in ("maxLength", "maxSize", "maxGraphemes"):
                if limit in my_prop:
                    assert limit in prop and my_prop[limit] >= prop[limit], (nsid, name, limit)
            if "accept" in prop:
                assert set(prop["accept"]) <= set(my_prop["accept"])


def _sample_records() -> list[tuple[str, dict]]:
    when = datetime(2025, 10, 17, 23, 43, 17, 100000, tzinfo=UTC)
    png = Blob(
        cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        mime_type="image/png",
        size=9000,
        path="",
    )
    mp4 = Blob(
        cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        mime_type="video/mp4",
        size=9000,
        path="",
    )
    jpg = Blob(
        cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        mime_type="image/jpeg",
        size=900,
        path="",
    )
    docs = {
        "painting": (
            {"code": "a3b", "slug": "04i9I27L:LazA65bb", "bucket": "art-aesthetic-computer"},
            Derived(blobs={"thumbnail": png}, facts={"recording": True}),
        ),
        "mood": ({"mood": "feeling 🌈 ünïcode"}, Derived()),
        "piece": ({"slug": "wand"}, Derived()),
        "kidlisp": ({"code": "k1", "source": "(wipe blue)\n" * 4000}, Derived()),
        "tape": (
            {"code": "t1", "slug": "wand-1729177200000", "bucket": "art-aesthetic-computer"},
            Derived(blobs={"video": mp4, "thumbnail": jpg}, facts={"zip_url": "https://x.example/t.zip"}),
        ),
        "news": (
            {"title": "a headline 🌈", "text": "body\n" * 2000, "url": "https://example.com/a?b=c#d"},
            Derived(),
        ),
    }
    out = []
    for media, (fields, derived) in docs.items():
        rules = MEDIA[media]
        item = rules.normalise({"_id": ObjectId(), "when": when, **fields})
        assert item.problem is None
        out.append((rules.nsid, rules.value(item, derived)))
    return out


def _as_json_schema(lexicon: dict) -> dict:
    """The published lexicon's record as JSON Schema (strings, lengths in UTF-8 bytes, blobs as objects)."""
    record = lexicon["defs"]["main"]["record"]
    props = {}
    for name, prop in record["properties"].items():
        if prop["type"] == "blob":
            props[name] = {
                "type": "object",
                "required": ["$type", "ref", "mimeType", "size"],
                "properties": {
                    "mimeType": {"enum": prop["accept"]},
                    "size": {"type": "integer", "maximum": prop["maxSize"]},
                },
            }
        elif prop["type"] == "array":
            props[name] = {"type": "array", "maxItems": prop["maxLength"], "items": {"type": "string"}}
        else:
            props[name] = {"type": "string"}
            if prop.get("format") == "datetime":
                props[name]["pattern"] = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
    return {"type": "object", "required": record["required"], "properties": props}


def test_every_built_record_is_valid_against_ours_and_the_published_lexicons():
    ours = load_lexicons()
    theirs = published()
    for nsid, value in _sample_records():
        ours[nsid].validate(value)
        Lexicon(nsid, "tid", theirs[nsid]["defs"]["main"]["record"]).validate(value)
        jsonschema.validate(value, _as_json_schema(theirs[nsid]))


def test_violations_name_field_and_rule():
    mood = load_lexicons()["computer.aesthetic.mood"]
    found = {str(v) for v in mood.violations({"mood": "x" * 5001, "when": "yesterday"})}
    assert "ref: required" in found
    assert "when: format datetime (ISO 8601 with timezone)" in found
    assert any(v.startswith("mood: maxLength 5000") for v in found)
    painting = load_lexicons()["computer.aesthetic.painting"]
    bad_blob = {"$type": "blob", "ref": {"$link": "b"}, "mimeType": "image/gif", "size": 2_000_000}
    found = {str(v) for v in painting.violations({"thumbnail": bad_blob})}
    assert any("thumbnail: mimeType" in v for v in found) and any("thumbnail: maxSize" in v for v in found)
    assert blob_ref("b", "image/png", 1)["$type"] == "blob"


def test_max_length_counts_utf8_bytes():
    mood = load_lexicons()["computer.aesthetic.mood"]
    ok = {"mood": "🌈" * 1250, "when": "2025-01-01T00:00:00.000Z", "ref": "x"}  # 5,000 bytes
    assert mood.violations(ok) == []
    assert mood.violations({**ok, "mood": "🌈" * 1251})


def test_lone_surrogate_is_a_violation():
    mood = load_lexicons()["computer.aesthetic.mood"]
    found = mood.violations({"mood": "bad \ud800 text", "when": "2025-01-01T00:00:00.000Z", "ref": "x"})
    assert [str(v) for v in found] == ["mood: invalid Unicode (lone surrogate)"]


def test_arrays_count_items_and_check_each():
    news = load_lexicons()["computer.aesthetic.news"]
    base = {"headline": "h", "when": "2025-01-01T00:00:00.000Z"}
    assert news.violations({**base, "tags": ["a"] * 10}) == []
    found = [str(v) for v in news.violations({**base, "tags": ["a"] * 11 + ["x" * 65, 3]})]
    assert found == [
        "tags: at most 10 items (has 13)",
        "tags[11]: maxLength 64 UTF-8 bytes (has 65)",
        "tags[12]: must be a string",
    ]
    assert [str(v) for v in news.violations({**base, "tags": "a"})] == ["tags: must be an array"]
