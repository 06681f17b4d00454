"""The run's gathered MongoDB link updates (acpipeline/sync/links.py), on the embedded store."""

import subprocess
import sys
import threading

import litemongo
import pytest
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from acpipeline.sync.links import LinkWriteFailed, LinkWriter


@pytest.fixture
def db(tmp_path):
    client = litemongo.connect(str(tmp_path / "mongo"))
    db = client["test"]
    db["moods"].insert_many([{"_id": n} for n in range(5)])
    db["pieces"].insert_many([{"_id": n} for n in range(3)])
    yield db
    client.close()


def link(n: int) -> UpdateOne:
    return UpdateOne({"_id": n}, {"$set": {"atproto.rkey": f"r{n}"}})


def linked(db, collection: str) -> list[int]:
    return sorted(d["_id"] for d in db[collection].find({"atproto.rkey": {"$exists": True}}))


def test_links_wait_until_enough_are_gathered_or_flushed(db, tmp_path):
    writer = LinkWriter(db, lock_dir=tmp_path / "locks", flush_at=4)
    writer.add("moods", [link(0), link(1)])
    writer.add("pieces", [link(0)])
    assert writer.pending == 3 and linked(db, "moods") == [] and writer.writes == 0
    writer.add("moods", [link(2)])  # the fourth: everything gathered is written, one bulk per collection
    assert writer.pending == 0 and writer.writes == 2
    assert linked(db, "moods") == [0, 1, 2] and linked(db, "pieces") == [0]
    writer.add("moods", [])
    writer.add("moods", [link(3)])
    writer.flush()
    assert linked(db, "moods") == [0, 1, 2, 3] and writer.writes == 3


HOLDER = """
import fcntl, sys
with open(sys.argv[1], "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_links_gathered_by_other_threads_are_written_by_the_writers_own(db, tmp_path):
    # The record stage's account threads gather; the embedded store's connections belong to the thread that
    # made them, so only the writer's own thread writes, even past `flush_at`.
    writer = LinkWriter(db, lock_dir=tmp_path / "locks", flush_at=2)
    errors: list[Exception] = []

    def gather(n: int) -> None:
        try:
            writer.add("moods", [link(n)])
        except Exception as exc:  # a write from this thread: the store refuses it
            errors.append(exc)

    gatherers = [threading.Thread(target=gather, args=(n,)) for n in range(5)]
    for gatherer in gatherers:
        gatherer.start()
    for gatherer in gatherers:
        gatherer.join()
    assert errors == [] and writer.pending == 5 and writer.writes == 0 and linked(db, "moods") == []
    writer.add("pieces", [link(0)])  # past flush_at, on the writer's thread: everything gathered is written
    assert writer.pending == 0 and linked(db, "moods") == [0, 1, 2, 3, 4] and linked(db, "pieces") == [0]


def test_a_write_waits_for_the_collections_lock(db, tmp_path):
    """Another process linking the same collection holds its lock: the write waits until it lets go."""
    writer = LinkWriter(db, lock_dir=tmp_path / "locks")
    writer.add("moods", [link(0)])
    (tmp_path / "locks").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "locks" / "mongo-moods.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    released = threading.Event()

    def release() -> None:
        released.set()
        holder.stdin.close()

    threading.Timer(0.5, release).start()
    writer.flush()
    assert released.is_set() and linked(db, "moods") == [0]
    holder.wait(10)


def test_a_failed_write_keeps_its_links_for_the_next_flush(db, tmp_path, monkeypatch):
    writer = LinkWriter(db)
    writer.add("moods", [link(0), link(1)])
    bulk_write = type(db["moods"]).bulk_write

    def refused(self, *args, **kwargs):
        raise PyMongoError("refused")

    monkeypatch.setattr(type(db["moods"]), "bulk_write", refused)
    with pytest.raises(LinkWriteFailed, match="refused the links of 2 moods records"):
        writer.flush()
    assert writer.pending == 2
    monkeypatch.setattr(type(db["moods"]), "bulk_write", bulk_write)
    writer.flush()
    assert writer.pending == 0 and linked(db, "moods") == [0, 1]
