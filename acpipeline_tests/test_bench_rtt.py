"""The network-shaped benchmark: `acpipeline bench --rtt` runs and reports its keys (timing is not asserted),
and the proxy under it delays as a network does (lower bounds only: a loaded machine only adds time)."""

import json
import time

import httpx

from acpipeline.bench import counting_proxy
from acpipeline.bench.counting_proxy import CountingProxy, Exchange, summarize
from acpipeline.bench.run import KEYS, NETWORK_KEYS
from acpipeline.cli import main
from acpipeline.demo.media_server import MediaServer
from acpipeline.settings import DAGSTER_ENV

RTT_MS = 200
RTT_S = RTT_MS / 1000


def _timed_get(http: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = http.get(path)
    return time.perf_counter() - started, response


def test_a_request_pays_the_round_trip_and_a_new_connection_its_handshake(tmp_path, monkeypatch):
    # How long the proxy holds each request on its way to the server, as it computes it (its target moment
    # minus the time of the call: a busy machine can only make that shorter, never longer).
    held: list[float] = []
    sleep_until = counting_proxy._sleep_until

    def recorded(moment: float) -> None:
        held.append(moment - time.perf_counter())
        sleep_until(moment)

    monkeypatch.setattr(counting_proxy, "_sleep_until", recorded)
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "a.png").write_bytes(b"\x89PNG" + bytes(1000))
    with MediaServer(tmp_path) as media, CountingProxy(media.url, rtt_ms=RTT_MS, name="storage") as proxy:
        with httpx.Client(base_url=proxy.url) as http:
            first_s, first = _timed_get(http, "/bucket/a.png")
            second_s, second = _timed_get(http, "/bucket/a.png")  # the same kept-alive connection
            missing_s, missing = _timed_get(http, "/bucket/missing.png")
        with httpx.Client(base_url=proxy.url) as other:
            fresh_s, _ = _timed_get(other, "/bucket/a.png")  # a new connection: a handshake again
        exchanges = proxy.take()

    assert first.content == second.content == b"\x89PNG" + bytes(1000)
    assert missing.status_code == 404  # the server's answer, passed through
    assert first_s >= 2 * RTT_S and fresh_s >= 2 * RTT_S  # handshake, then request and answer
    assert second_s >= RTT_S and missing_s >= RTT_S
    # Kept alive, the second and third pay no handshake: the proxy holds them half a round trip on the way
    # up, not the handshake's round trip more (how long they took is the benchmark's to measure).
    assert [e.new_connection for e in exchanges] == [True, False, False, True]
    connections = [e.connection for e in exchanges]
    assert connections[:3] == [connections[0]] * 3 and connections[3] != connections[0], connections
    assert len(held) == 8, held  # one hold up and one down per request, the requests one after the other
    up = held[0::2]
    assert all(wait <= RTT_S / 2 + 0.001 for wait in up[1:3]), up
    assert {e.method for e in exchanges} == {"storage:GET .png"}


def test_an_answer_the_client_holds_is_counted_when_it_asks(tmp_path, monkeypatch):
    # The proxy records an exchange after its answer is sent: the client can hold the answer first (a busy
    # machine, made certain here by a slow record) and must still find it in `take` and `writes`.
    keep = CountingProxy._keep

    def slow_keep(self: CountingProxy, exchange: Exchange) -> None:
        time.sleep(0.3)
        keep(self, exchange)

    monkeypatch.setattr(CountingProxy, "_keep", slow_keep)
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with (
        MediaServer(tmp_path) as media,
        CountingProxy(media.url) as proxy,
        httpx.Client(base_url=proxy.url) as http,
    ):
        assert http.get("/a.png").status_code == 200
        assert [e.status for e in proxy.take()] == [200]


def test_bandwidth_limits_the_bytes_per_second(tmp_path):
    (tmp_path / "big.bin").write_bytes(bytes(200_000))
    with (
        MediaServer(tmp_path) as media,
        CountingProxy(media.url, bandwidth_mbit=8) as proxy,
        httpx.Client(base_url=proxy.url) as http,
    ):
        elapsed, response = _timed_get(http, "/big.bin")
    assert len(response.content) == 200_000
    assert elapsed >= 0.2  # 200 kB at 1 MB/s


def test_writes_are_counted_and_requests_summarized(pds_url):
    with CountingProxy(pds_url, rtt_ms=20) as proxy, httpx.Client(base_url=proxy.url) as http:
        assert http.get("/xrpc/com.atproto.server.describeServer").status_code == 200
        body = {"repo": "did:plc:x", "writes": [{"collection": "computer.aesthetic.kidlisp"}]}
        assert http.post("/xrpc/com.atproto.repo.applyWrites", json=body).status_code in (400, 401)
        assert proxy.writes() == 1
        exchanges = proxy.take()
        summary = summarize(exchanges)
    assert [e.collection for e in exchanges] == ["", "computer.aesthetic.kidlisp"]
    assert summary["requests"] == 2 and summary["new_connections"] == 1
    assert set(summary["methods"]) == {"com.atproto.server.describeServer", "com.atproto.repo.applyWrites"}


def test_summary_finds_the_serial_time():
    def ex(method: str, start: float, end: float) -> Exchange:
        return Exchange(method, start, end, 0.0, 1, False, 0, 0, 200)

    # listRecords alone 0-1, then two applyWrites overlapping 1-2 and 1.5-3 (alone again 2-3), idle 3-4
    summary = summarize(
        [ex("list", 0, 1), ex("apply", 1, 2), ex("apply", 1.5, 3), ex("upload", 4, 4.5)], origin=-1
    )
    assert summary["busy_s"] == 3.5 and summary["serial_s"] == 3.0
    assert summary["methods"]["list"]["alone_s"] == 1.0
    assert summary["methods"]["apply"]["alone_s"] == 1.5 and summary["methods"]["apply"]["max_in_flight"] == 2
    assert summary["first_request_s"] == 1 and summary["last_answer_s"] == 5.5


def test_bench_with_rtt_runs_and_reports_its_keys(pds_url, tmp_path, monkeypatch):
    for name, value in DAGSTER_ENV.items():  # `main` sets these: keep them out of the other tests
        monkeypatch.setenv(name, value)
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "small", "--rtt", "20", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(KEYS) | set(NETWORK_KEYS) <= set(written)
    assert written["rtt_ms"] == 20 and written["bandwidth_mbit"] is None
    assert written["records"] > 0 and written["noop_writes"] == 0 and written["ceiling_overlapped_s"] > 0
    requests = written["requests"]
    assert set(requests) == {
        "full_sync",
        "noop_sync",
        "noop_full",
        "ceiling",
        "ceiling_overlapped",
        "seed_strategy",
        "tapes",
    }
    full = requests["full_sync"]["methods"]
    assert "com.atproto.repo.applyWrites" in full and "com.atproto.repo.uploadBlob" in full
    assert any(method.startswith("storage:GET") for method in full)  # the storage is behind the network too
    assert requests["seed_strategy"]["methods"]["com.atproto.server.createSession"]["n"] == written["records"]
