"""The MongoDB link fields (core/link_fields.py), as the sync writes and the wipe clears them."""

from datetime import UTC, datetime

import litemongo

from acpipeline.core.items import Link
from acpipeline.core.link_fields import has_link, link_of, link_set, link_unset
from acpipeline.core.media import MEDIA

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_link_is_set_found_read_and_cleared(tmp_path):
    client = litemongo.connect(str(tmp_path / "mongo"), tz_aware=True)
    try:
        moods, tapes = client["t"]["moods"], client["t"]["tapes"]
        moods.insert_many([{"_id": 1}, {"_id": 2}])
        tapes.insert_one({"_id": 1})
        mood, tape = MEDIA["mood"].mirrors_link, MEDIA["tape"].mirrors_link
        assert (mood, tape) == (False, True)
        moods.update_one({"_id": 1}, link_set(mood, "3k", "at://did/c/3k", "bafy", NOW))
        tapes.update_one({"_id": 1}, link_set(tape, "3t", "at://did/t/3t", "bafz", NOW))

        assert [d["_id"] for d in moods.find(has_link(mood))] == [1]
        assert link_of(moods.find_one({"_id": 1})) == Link("3k", "at://did/c/3k", "bafy")
        assert link_of(moods.find_one({"_id": 2})) is None
        assert moods.find_one({"_id": 1})["atproto"]["syncedAt"] == NOW
        assert "at" not in moods.find_one({"_id": 1})
        assert tapes.find_one({"_id": 1})["at"] == {"rkey": "3t", "uri": "at://did/t/3t", "cid": "bafz"}

        # a tape whose `atproto` link is gone but whose `at` mirror remains still counts as linked
        tapes.update_one({"_id": 1}, {"$unset": {"atproto": ""}})
        assert tapes.count_documents(has_link(tape)) == 1 and tapes.count_documents(has_link(mood)) == 0
        tapes.update_one({"_id": 1}, link_unset(tape))
        moods.update_one({"_id": 1}, link_unset(mood))
        assert tapes.count_documents(has_link(tape)) == 0 and moods.count_documents(has_link(mood)) == 0
        assert not tapes.find_one({"_id": 1}).get("at") and link_of(moods.find_one({"_id": 1})) is None
    finally:
        client.close()
