"""The requests of a pass, and the PDS's rate limits on them.

- Requests (`platform_requests`): every request either proxy forwarded during the pass, counted by XRPC
  method (the PDS) and by HTTP method and file suffix (the storage, e.g. `storage:GET .png`), with the
  seconds spent in the proxy and at the server, the bytes, and the answers that were not 2xx; no exchange
  is kept (a pass makes tens of thousands). Writes are the PDS's write methods.
- The PDS's rate limits (`pds_limits`): `off` (the local PDS's default); `on`, the reference PDS's own
  limits; `bypass`, the same limits, and the servers get the PDS's bypass key. Each pass reports the 429
  answers and `floor_s`: the time the global limit alone would impose on the PDS requests the pass made
  (every request but getRepo at `GLOBAL_LIMIT_PER_S`; the limiter's window is fixed, so a pass under a
  window's requests could go faster). A probe (`_probe_limits`, describeServer without and with the key,
  directly to the PDS) checks that the limits apply and that the key gets past them; after each pass
  another (without) reads what is left of the global window (`pds_limit_after.remaining`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from acpipeline.bench.counting_proxy import WRITE_METHODS, CountingProxy, Exchange, Link
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_HEADER

# The reference PDS's global limit (`dist/rate-limits.js`, "global-ip"): 3,000 requests per 5 minutes per IP,
# getRepo excepted (and the health check, which is no XRPC method).
GLOBAL_LIMIT_PER_S = 3000 / 300
NOT_GLOBALLY_LIMITED = frozenset({"com.atproto.sync.getRepo", "_health"})


class TallyingProxy(CountingProxy):
    """A CountingProxy that keeps, per method, how many requests, their seconds in the proxy and at the
    server, new connections, bytes and the answers that were not 2xx, instead of every exchange: a pass
    over the platform makes tens of thousands of requests. `set_network` changes the modelled network."""

    def __init__(
        self, upstream: str, rtt_ms: float = 0.0, bandwidth_mbit: float | None = None, name: str = "pds"
    ) -> None:
        super().__init__(upstream, rtt_ms, bandwidth_mbit, name=name)
        self.tally: dict[str, dict[str, Any]] = {}

    def _keep(self, exchange: Exchange) -> None:
        if exchange.method in WRITE_METHODS:
            self.counts[exchange.method] += 1
        row = self.tally.get(exchange.method)
        if row is None:
            row = self.tally[exchange.method] = {
                "n": 0,
                "s": 0.0,
                "server_s": 0.0,
                "new_connections": 0,
                "sent": 0,
                "received": 0,
                "statuses": Counter(),
            }
        row["n"] += 1
        row["s"] += exchange.end - exchange.start
        row["server_s"] += exchange.upstream_s
        row["new_connections"] += exchange.new_connection
        row["sent"] += exchange.sent
        row["received"] += exchange.received
        if not 200 <= exchange.status < 300:
            row["statuses"][exchange.status] += 1

    def take_tally(self) -> dict[str, dict[str, Any]]:
        """The tally since the last call, forgotten here."""
        with self._lock:
            self._settle()
            taken, self.tally = self.tally, {}
        return taken

    def set_network(self, rtt_ms: float, bandwidth_mbit: float | None = None) -> None:
        """From the next request on, this round trip and bandwidth."""
        self.rtt_s, self.bandwidth_mbit = rtt_ms / 1000, bandwidth_mbit
        self.up, self.down = Link(self.rtt_s / 2, bandwidth_mbit), Link(self.rtt_s / 2, bandwidth_mbit)


def _rows(tally: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for method, row in sorted(tally.items(), key=lambda item: (-item[1]["n"], item[0])):
        out[method] = {
            "n": row["n"],
            "s": round(row["s"], 2),
            "server_s": round(row["server_s"], 2),
            "new_connections": row["new_connections"],
            "sent_mb": round(row["sent"] / 1e6, 2),
            "received_mb": round(row["received"] / 1e6, 2),
            "not_2xx": {str(status): n for status, n in sorted(row["statuses"].items())},
        }
    return out


def pass_requests(pds: dict[str, dict[str, Any]], storage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A pass's requests from both proxies' tallies: per method, the totals, the PDS requests the global
    limit counts (`pds_globally_limited`) and the 429 answers."""
    pds_total = sum(row["n"] for row in pds.values())
    storage_total = sum(row["n"] for row in storage.values())
    return {
        "pds": _rows(pds),
        "storage": _rows(storage),
        "pds_total": pds_total,
        "storage_total": storage_total,
        "total": pds_total + storage_total,
        "pds_writes": sum(row["n"] for method, row in pds.items() if method in WRITE_METHODS),
        "pds_globally_limited": sum(
            row["n"] for method, row in pds.items() if method not in NOT_GLOBALLY_LIMITED
        ),
        "pds_429": sum(row["statuses"].get(429, 0) for row in pds.values()),
    }


def request_counts(requests: dict[str, Any]) -> dict[str, Any]:
    """The counts alone: per PDS method, per storage method, and the totals."""
    return {
        "pds": {method: row["n"] for method, row in requests["pds"].items()},
        "storage": {method: row["n"] for method, row in requests["storage"].items()},
        "pds_total": requests["pds_total"],
        "storage_total": requests["storage_total"],
        "total": requests["total"],
    }


def _probe_limits(pds_url: str, key: str | None = None) -> dict[str, Any]:
    """Whether the PDS applies rate limits (describeServer's `ratelimit-limit` header without the key), what
    is left of this IP's global window (`remaining`, this probe counted), and whether the key gets past
    them (no such header with it)."""
    with httpx.Client(base_url=pds_url, timeout=30) as http:
        plain = http.get("/xrpc/com.atproto.server.describeServer")
        out: dict[str, Any] = {"limited": "ratelimit-limit" in plain.headers}
        out["policy"] = plain.headers.get("ratelimit-policy")
        remaining = plain.headers.get("ratelimit-remaining")
        out["remaining"] = int(remaining) if remaining and remaining.isdigit() else None
        if key:
            keyed = http.get(
                "/xrpc/com.atproto.server.describeServer", headers={RATELIMIT_BYPASS_HEADER: key}
            )
            out["bypassed"] = "ratelimit-limit" not in keyed.headers
    return out
