"""KidLisp with the platform's own store switched on, against the real PDS: MongoDB holds projection rows
(`kidlisp-projection.mjs`: code, source, hash, when, user), the platform writes the records itself (no `ref`,
a TID the PDS picks), and some pieces are in its store only. Records of projection rows are adopted by code;
a record whose code MongoDB lacks is kept and counted (metadata, the CLI's table and totals, `status`); only
a row that says `nuked: true` deletes one."""

from __future__ import annotations

import json
from datetime import timedelta

from bson import ObjectId

from acpipeline.core.items import iso_when

from .helpers import T0, add_user, head, records, sync
from .test_cli import cli

KIDLISP = "computer.aesthetic.kidlisp"


def projection_row(db, sub: str, n: int, **extra) -> dict:
    source = f"(wipe {n})\n(ink red)\n(line 0 0 {n} {n})"
    row = {
        "code": f"kp{n}",
        "source": source,
        "hash": f"{n:064x}",
        "when": T0 + timedelta(hours=n),
        "user": sub,
    }
    db["kidlisp"].insert_one({"_id": ObjectId(), **row, **extra})
    return db["kidlisp"].find_one({"code": row["code"]})


def platform_record(world, db, sub: str, did: str, code: str, source: str, when: str) -> str:
    """What the platform's media writer creates from its store: no `ref`, the PDS picks the rkey."""
    password = db["users"].find_one({"_id": sub})["atproto"]["password"]
    session = world.client.session(did, password)
    value = {"$type": KIDLISP, "code": code, "source": source, "acUrl": f"https://aesthetic.computer/${code}"}
    body = json.dumps({"repo": did, "collection": KIDLISP, "record": {**value, "when": when}})
    created = world.client.call("POST", "com.atproto.repo.createRecord", body=body.encode(), session=session)
    return created["uri"].rsplit("/", 1)[-1]


def test_platform_records_are_adopted_by_code_and_records_mongodb_lacks_are_kept(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "lisper")
    rows = [projection_row(db, sub, n) for n in range(3)]
    theirs = {
        row["code"]: platform_record(world, db, sub, did, row["code"], row["source"], iso_when(row["when"]))
        for row in rows[:2]
    }
    only_in_store = platform_record(world, db, sub, did, "zz9", "(ink blue)", "2024-05-01T00:00:00.000Z")
    nuked = projection_row(db, sub, 7, nuked=True)  # a legacy row its owner nuked: its record goes
    ours_of_nuked = platform_record(
        world, db, sub, did, nuked["code"], nuked["source"], iso_when(nuked["when"])
    )

    result = sync(world, [handle], ["kidlisp"])[(handle, "kidlisp")]
    row = result.row()
    assert result.ok and result.check_passed, row
    assert (row["desired"], row["created"], row["updated"], row["deleted"]) == (3, 1, 2, 1), row
    assert row["not_in_mongodb"] == 1 and result.outcome and result.outcome.not_in_mongodb == 1, row
    listed = {r["uri"].rsplit("/", 1)[-1]: r["value"] for r in records(world, did, KIDLISP)}
    by_code: dict[str, list[str]] = {}
    for rkey, value in listed.items():
        by_code.setdefault(value["code"], []).append(rkey)
    assert all(len(rkeys) == 1 for rkeys in by_code.values()), by_code  # one record per code
    for code, rkey in theirs.items():
        assert by_code[code] == [rkey]  # the platform's rkey kept, `ref` written in
        assert listed[rkey]["ref"] == str(next(r["_id"] for r in rows if r["code"] == code))
    assert listed[only_in_store]["code"] == "zz9" and "ref" not in listed[only_in_store]
    assert ours_of_nuked not in listed and nuked["code"] not in by_code

    # Converged: a full re-check writes nothing; the quick path proves it and still counts what it keeps.
    rev = head(world, did)
    again = sync(world, [handle], ["kidlisp"])[(handle, "kidlisp")].row()
    assert (again["created"], again["updated"], again["deleted"], again["not_in_mongodb"]) == (0, 0, 0, 1)
    assert head(world, did) == rev
    proven = sync(world, [handle], ["kidlisp"], full=False)[(handle, "kidlisp")]
    assert proven.skipped and proven.row()["not_in_mongodb"] == 1, proven.row()

    # The operator sees the count: the sync's table and totals, and `status`.
    out = cli("sync", "--handle", handle, "--kidlisp-only", "--full")
    assert out.returncode == 0, out.stderr
    assert "not_in_mongodb" in out.stdout and "1 kept that MongoDB does not have" in out.stdout, out.stdout
    status = cli("status", "--handle", handle, "--json")
    assert status.returncode == 0, status.stderr
    kidlisp = next(r for r in json.loads(status.stdout) if r["media"] == "kidlisp")
    assert (kidlisp["desired"], kidlisp["on_pds"], kidlisp["not_in_mongodb"]) == (3, 4, 1), kidlisp
    plain = cli("status", "--handle", handle).stdout
    assert "(1 kept that MongoDB does not have); 0 of 6 partitions differ" in plain, plain
