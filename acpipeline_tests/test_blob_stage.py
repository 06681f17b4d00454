"""The painting blob stage over a storage a network away (the bench's proxy in front of the media server):
the recording checks travel alongside the fetches instead of a round trip after each."""

import io

from PIL import Image

from acpipeline.bench.counting_proxy import CountingProxy, Exchange
from acpipeline.core.items import Item
from acpipeline.demo.media_server import MediaServer
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.blobs import derive_blobs
from acpipeline.sync.cache import DerivedCache

BUCKET = "user-aesthetic-computer"
OWNER = "auth0|blob-stage"
PAINTINGS = 12


def _png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (8, 8), (n * 20, 0, 0, 255)).save(out, "PNG")
    return out.getvalue()


def _most_in_flight(exchanges: list[Exchange]) -> int:
    moments = sorted([(e.start, 1) for e in exchanges] + [(e.end, -1) for e in exchanges])
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def test_recording_checks_go_alongside_the_fetches(tmp_path, monkeypatch):
    monkeypatch.setenv("ACPIPELINE_NETWORK_CONCURRENCY", "2")
    folder = tmp_path / "media" / BUCKET / OWNER
    (folder / "painting").mkdir(parents=True)
    items = []
    for n in range(PAINTINGS):
        (folder / "painting" / f"p{n}.png").write_bytes(_png(n))
        if n % 3 == 0:
            (folder / f"p{n}.zip").write_bytes(b"PK\x05\x06" + bytes(18))
        data = {"bucket": BUCKET, "slug": f"p{n}", "recording_slug": f"p{n}"}
        items.append(Item("painting", f"ref{n}", OWNER, None, data=data))

    media = MediaServer(tmp_path / "media")
    with media, CountingProxy(media.url, rtt_ms=100, name="storage") as proxy:
        templates = {name: t.replace(media.url, proxy.url) for name, t in media.url_templates().items()}
        storage = StorageResource(**templates)
        derived, stats = derive_blobs(items, "painting", storage, DerivedCache(tmp_path))
        exchanges = proxy.take()

    assert (stats.derived, stats.failed) == (PAINTINGS, 0)
    assert {ref: d.facts["recording"] for ref, d in derived.items()} == {
        f"ref{n}": n % 3 == 0 for n in range(PAINTINGS)
    }
    fetches = [e for e in exchanges if e.method == "storage:GET .png"]
    checks = [e for e in exchanges if e.method == "storage:HEAD .zip"]
    assert (len(fetches), len(checks)) == (PAINTINGS, PAINTINGS), [e.method for e in exchanges]
    # Each kind stays within the network concurrency, and the two kinds overlap: more requests in flight
    # at once than either allows (a HEAD after each GET in the same worker never exceeds 2).
    assert _most_in_flight(fetches) <= 2 and _most_in_flight(checks) <= 2
    assert _most_in_flight(exchanges) > 2
