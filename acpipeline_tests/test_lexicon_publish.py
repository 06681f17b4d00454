"""Publishing our lexicons as `com.atproto.lexicon.schema` records: the pure plan and diff, then publish and
check against the real reference PDS."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from acpipeline.cli import main
from acpipeline.core.lexicon import default_lexicon_dir, load_documents
from acpipeline.core.lexicon_publish import (
    SCHEMA_NSID,
    dns_records,
    json_diff,
    plan_schemas,
    schema_diff,
    schema_record,
)
from acpipeline.errors import OperatorError

from .helpers import add_user, head
from .test_cli import cli, one_plain_line

MOOD_MAX = "defs.main.record.properties.mood.maxLength"


def doc(nsid: str, max_length: int = 300) -> dict:
    record = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "string"}}}
    record["properties"]["a"]["maxLength"] = max_length
    return {"lexicon": 1, "id": nsid, "defs": {"main": {"type": "record", "key": "tid", "record": record}}}


# -- the pure part ----------------------------------------------------------------------------------------


def test_our_documents_are_every_file_under_lexicons(tmp_path):
    files = sorted(default_lexicon_dir().rglob("*.json"))
    docs = load_documents()
    assert sorted(docs) == sorted(json.loads(p.read_text())["id"] for p in files)
    assert all(d["lexicon"] == 1 and n.startswith("computer.aesthetic.") for n, d in docs.items())

    copy = tmp_path / "lexicons"
    shutil.copytree(default_lexicon_dir(), copy)
    (copy / "computer" / "aesthetic" / "extra.json").write_text(json.dumps(doc("computer.aesthetic.extra")))
    assert set(load_documents(copy)) == set(docs) | {"computer.aesthetic.extra"}

    (copy / "computer" / "aesthetic" / "broken.json").write_text(json.dumps({"id": "computer.aesthetic.x"}))
    with pytest.raises(OperatorError, match="broken.json is not a lexicon document"):
        load_documents(copy)


def test_json_diff_names_each_differing_path():
    ours = doc("computer.aesthetic.body", 10000)
    published = schema_record(doc("computer.aesthetic.body", 5000))
    published["defs"]["main"]["record"]["required"] = ["a"]
    published["defs"]["main"]["description"] = "older"
    found = [str(d) for d in schema_diff(published, ours)]
    assert found == [
        'defs.main.description: published "older", ours (absent)',
        "defs.main.record.properties.a.maxLength: published 5000, ours 10000",
        'defs.main.record.required[1]: published (absent), ours "b"',
    ]
    assert schema_diff(schema_record(ours), ours) == []  # `$type` aside, identical
    assert [str(d) for d in json_diff({"x": True}, {"x": 1})] == ["x: published true, ours 1"]
    assert [d.as_dict() for d in json_diff({}, {"x": [1]})] == [{"path": "x", "published": None, "ours": [1]}]


def test_plan_creates_updates_and_reports_extras_without_deleting():
    docs = {
        n: doc(n) for n in ("computer.aesthetic.new", "computer.aesthetic.same", "computer.aesthetic.edit")
    }
    published = {
        "computer.aesthetic.same": schema_record(doc("computer.aesthetic.same")),
        "computer.aesthetic.edit": schema_record(doc("computer.aesthetic.edit", 5000)),
        "computer.aesthetic.retired": schema_record(doc("computer.aesthetic.retired")),
        "com.example.theirs": schema_record(doc("com.example.theirs")),  # not our namespace: not reported
    }
    plan = plan_schemas(docs, published)
    assert plan.create == ["computer.aesthetic.new"]
    assert list(plan.update) == ["computer.aesthetic.edit"]
    assert plan.unchanged == ["computer.aesthetic.same"]
    assert plan.extra == ["computer.aesthetic.retired"]
    assert not plan.identical
    assert plan.lines() == [
        "missing computer.aesthetic.new: not published",
        "changed computer.aesthetic.edit: defs.main.record.properties.a.maxLength: published 5000, ours 300",
        "extra computer.aesthetic.retired: published, but no lexicon of ours has this id",
    ]
    writes = plan.writes()
    assert [(w.action, w.rkey) for w in writes] == [
        ("create", "computer.aesthetic.new"),
        ("update", "computer.aesthetic.edit"),
    ]
    assert writes[1].value == {"$type": SCHEMA_NSID, **docs["computer.aesthetic.edit"]}
    assert json.loads(json.dumps(plan.as_dict()))["update"]["computer.aesthetic.edit"][0]["ours"] == 300

    settled = plan_schemas(docs, {n: schema_record(d) for n, d in docs.items()})
    assert settled.identical and settled.writes() == [] and len(settled.unchanged) == 3


def test_one_dns_record_per_authority():
    records = dns_records(
        ["computer.aesthetic.mood", "computer.aesthetic.news", "computer.other.x.y"], "did:x"
    )
    assert [str(r) for r in records] == [
        'set DNS TXT _lexicon.aesthetic.computer = "did=did:x"',
        'set DNS TXT _lexicon.x.other.computer = "did=did:x"',
    ]


# -- against the real PDS ---------------------------------------------------------------------------------


def schemas(world, did: str) -> dict[str, dict]:
    """The repository's schema records by rkey: value and CID."""
    return {r["uri"].rsplit("/", 1)[-1]: r for r in world.client.list_records(did, SCHEMA_NSID)}


def test_publish_writes_once_and_check_finds_what_was_changed_by_hand(world, capsys):
    printed: list[str] = []

    def lexicons(*args: str) -> tuple[int, str]:
        code = main(["lexicons", *args])
        captured = capsys.readouterr()
        printed.extend((captured.out, captured.err))
        return code, captured.out

    db = world.db()
    _, handle, did = add_user(world, db, "lexicons")
    password = db["users"].find_one({"atproto.handle": handle})["atproto"]["password"]
    docs = load_documents()
    dns = f'set DNS TXT _lexicon.aesthetic.computer = "did={did}"'

    code, out = lexicons("check", "--handle", handle)
    assert code == 1 and f"{len(docs)} differences" in out and dns in out
    assert all(f"missing {nsid}: not published" in out for nsid in docs)

    code, out = lexicons("publish", "--handle", handle)
    assert code == 0 and f"{len(docs)} written" in out and dns in out
    published = schemas(world, did)
    assert {n: r["value"] for n, r in published.items()} == {n: schema_record(d) for n, d in docs.items()}
    rev = head(world, did)

    # a second publish writes nothing: same head, same CIDs
    code, out = lexicons("publish", "--handle", handle, "--json")
    report = json.loads(out)
    assert code == 0 and report["written"] == 0 and report["rev"] is None
    assert report["create"] == [] and report["update"] == {} and report["unchanged"] == sorted(docs)
    assert report["dns"] == [{"type": "TXT", "name": "_lexicon.aesthetic.computer", "value": f"did={did}"}]
    assert head(world, did) == rev
    assert {n: r["cid"] for n, r in schemas(world, did).items()} == {
        n: r["cid"] for n, r in published.items()
    }
    code, out = lexicons("check", "--handle", handle)
    assert code == 0 and "identical" in out

    # by hand: a changed maxLength, a deleted schema, a retired one
    session = world.client.session(did, password)
    changed = copy.deepcopy(schema_record(docs["computer.aesthetic.mood"]))
    changed["defs"]["main"]["record"]["properties"]["mood"]["maxLength"] = 4000
    retired = {**schema_record(docs["computer.aesthetic.mood"]), "id": "computer.aesthetic.retired"}
    for nsid, value in (("computer.aesthetic.mood", changed), ("computer.aesthetic.retired", retired)):
        body = {"repo": did, "collection": SCHEMA_NSID, "rkey": nsid, "record": value}
        world.client.call(
            "POST", "com.atproto.repo.putRecord", body=json.dumps(body).encode(), session=session
        )
    body = {"repo": did, "collection": SCHEMA_NSID, "rkey": "computer.aesthetic.piece"}
    world.client.call(
        "POST", "com.atproto.repo.deleteRecord", body=json.dumps(body).encode(), session=session
    )

    code, out = lexicons("check", "--handle", handle)
    assert code == 1 and "3 differences" in out
    assert f"changed computer.aesthetic.mood: {MOOD_MAX}: published 4000, ours 5000" in out
    assert "missing computer.aesthetic.piece: not published" in out
    assert "extra computer.aesthetic.retired: published" in out

    # publish mends the two of ours and leaves the retired one alone, saying so
    code, out = lexicons("publish", "--handle", handle)
    assert code == 0 and "2 written" in out
    assert "created computer.aesthetic.piece" in out and "updated computer.aesthetic.mood" in out
    assert "left alone: computer.aesthetic.retired" in out
    assert schemas(world, did)["computer.aesthetic.mood"]["value"] == schema_record(
        docs["computer.aesthetic.mood"]
    )
    code, out = lexicons("check", "--handle", handle, "--json")
    report = json.loads(out)
    assert code == 1 and report["extra"] == ["computer.aesthetic.retired"]
    assert report["create"] == [] and report["update"] == {} and report["identical"] is False
    assert not any(password in text or "accessJwt" in text for text in printed)


def test_an_unknown_handle_is_one_plain_line(world):
    result = cli("lexicons", "publish", "--handle", "nobody.at.aesthetic.computer")
    one_plain_line(result, "nobody.at.aesthetic.computer")
    assert main(["lexicons", "check", "--handle", "nobody.at.aesthetic.computer"]) == 2
