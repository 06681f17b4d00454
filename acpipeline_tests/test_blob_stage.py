"""The painting blob stage over a storage a network away (the bench's proxy in front of the media server):
the recording checks travel alongside the fetches instead of a round trip after each."""

import io
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from PIL import Image

from acpipeline.bench.counting_proxy import CountingProxy
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


class InFlight:
    """Storage calls in flight at once, by kind, counted where the stage makes them (the proxy's own times
    can overlap by a scheduling slice when a thread answers and the next request arrives)."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, kind: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.now[kind] += 1
                self.most[kind] = max(self.most[kind], self.now[kind])
                self.most["all"] = max(self.most["all"], sum(self.now.values()))
            try:
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    self.now[kind] -= 1

        return counted


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

    in_flight = InFlight()
    monkeypatch.setattr(StorageResource, "fetch", in_flight.wrap("GET", StorageResource.fetch))
    monkeypatch.setattr(StorageResource, "exists", in_flight.wrap("HEAD", StorageResource.exists))
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
    # Each kind stays within the network concurrency, and the two kinds overlap: more calls in flight at
    # once than either allows (a HEAD after each GET in the same worker never exceeds 2).
    assert in_flight.most["GET"] <= 2 and in_flight.most["HEAD"] <= 2, in_flight.most
    assert in_flight.most["all"] > 2, in_flight.most
