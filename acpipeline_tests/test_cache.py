"""The derived-blob cache is shared by partition runs in several processes."""

import multiprocessing

import pytest

from acpipeline.sync.cache import DerivedCache


def _open_and_write(home: str, n: int, start) -> None:
    from pathlib import Path

    start.wait()
    cache = DerivedCache(Path(home))
    for i in range(20):
        cache.put(f"key-{n}", {"n": n, "i": i})
        cache.get(f"key-{n}")


def test_first_use_from_many_processes_at_once(tmp_path):
    context = multiprocessing.get_context("fork")
    start = context.Barrier(16)
    processes = [context.Process(target=_open_and_write, args=(str(tmp_path), n, start)) for n in range(16)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0] * 16
    cache = DerivedCache(tmp_path)
    assert [cache.get(f"key-{n}") for n in range(16)] == [{"n": n, "i": 19} for n in range(16)]


def test_blobs_are_stored_by_content(tmp_path):
    cache = DerivedCache(tmp_path)
    first, again = cache.store_blob(b"png bytes", "image/png"), cache.store_blob(b"png bytes", "image/png")
    assert first == again and cache.blob(first.__dict__).read() == b"png bytes"


def test_deferred_puts_are_written_together_at_the_end(tmp_path):
    cache, other = DerivedCache(tmp_path), DerivedCache(tmp_path)
    with pytest.raises(RuntimeError, match="the blob stage failed"), cache.deferred():  # not swallowed
        cache.put("a", {"v": 1})
        cache.put("a", {"v": 2})
        assert cache.get("a") == {"v": 2}  # this cache sees its own puts at once
        assert other.get("a") is None  # nothing written yet
        raise RuntimeError("the blob stage failed")
    assert other.get("a") == {"v": 2}  # written at the end, even after a failure
    cache.put("b", {"v": 3})  # outside: written at once
    assert other.get("b") == {"v": 3}


def test_a_shared_cache_dir_serves_every_machine(tmp_path, monkeypatch):
    """`ACPIPELINE_CACHE_DIR`: the cache of ACPIPELINE_HOME on a shared volume, one file per index entry
    (no SQLite: its locks do not hold over network filesystems); a blob is found by its CID wherever the
    volume is mounted."""
    shared = tmp_path / "volume"
    monkeypatch.setenv("ACPIPELINE_CACHE_DIR", str(shared))
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("ACPIPELINE_HOME", str(machine_a))
    first = DerivedCache(machine_a)
    blob = first.store_blob(b"mp4 bytes", "video/mp4")
    with first.deferred():
        first.put("tape-v1:zip:abc", {"video": blob.__dict__})
    first.put("recording:x", {"exists": False})
    assert blob.path == str(shared / "blobs" / blob.cid)

    monkeypatch.setenv("ACPIPELINE_HOME", str(machine_b))  # another machine, an empty home
    second = DerivedCache(machine_b)
    entry = second.get("tape-v1:zip:abc")
    assert entry == {"video": blob.__dict__} and second.blob(entry["video"]).read() == b"mp4 bytes"
    assert second.get("recording:x") == {"exists": False}
    assert second.get("recording:x", max_age_s=0) is None and second.get("missing") is None
    # stored where the volume was mounted elsewhere: found by its CID in this machine's mount
    moved = {**blob.__dict__, "path": "/elsewhere/blobs/" + blob.cid}
    assert second.blob(moved).path == blob.path
    assert second.blob({**moved, "cid": "../escape"}) is None
    assert not (machine_b / "derived.sqlite").exists() and not (machine_b / "blobs").exists()
    assert not list(shared.rglob("*.tmp")) and not list(shared.rglob("*.sqlite"))
    for torn in (shared / "index").rglob("*.json"):  # a damaged entry is a miss: derived again
        torn.write_text('{"key": 1')
    assert second.get("recording:x") is None

    # A folder named explicitly (the benchmark's cold cache) is used as it is.
    cold = DerivedCache(tmp_path / "cold")
    assert cold.get("recording:x") is None and (tmp_path / "cold" / "derived.sqlite").exists()
