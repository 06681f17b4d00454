"""The PDS's rate limits: whether it applies them, whether the bypass key gets past them, and how long the
backlog's sync takes under them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from acpipeline.core.batches import MAX_WRITES
from acpipeline.core.media import MEDIA
from acpipeline.errors import OperatorError
from acpipeline.operations.doctor.base import CheckResult, Doctor, duration
from acpipeline.operations.doctor.services import DESCRIBE
from acpipeline.operations.source_scan import projection
from acpipeline.resources.mongo import MongoDatabase
from acpipeline.resources.pds import (
    PdsError,
    RateLimited,
    RateLimitStatus,
    rate_limit_status,
)
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV
from acpipeline.sync.extract import Accounts, read_all

# The reference PDS's limits that a describeServer answer does not show (@atproto/pds: dist/rate-limits.js,
# and uploadBlob's own limit): write points per account (a create costs 3), blob uploads per IP.
CREATE_POINTS = 3
WRITE_POINTS = ((3600.0, 5000, "an hour"), (86400.0, 35000, "a day"))
UPLOADS_PER_DAY = 1000
DEFAULT_WINDOW_S = 300.0  # the per-IP window, when `ratelimit-policy` does not say


@dataclass(frozen=True)
class PartitionBacklog:
    """One sync partition's share of the backlog: `creates` items MongoDB wants that have no record link yet,
    and their `blobs`."""

    handle: str
    media: str
    creates: int
    blobs: int


@dataclass(frozen=True)
class SyncEstimate:
    """What a full sync of the backlog asks of the PDS, and the least time the PDS's limits allow it
    (`limit` None: the PDS does not limit us; `bound` names the limit that sets `seconds`)."""

    writes: int
    requests: int
    limit: int | None
    window_s: float
    seconds: float = 0.0
    bound: str = ""

    def line(self) -> str:
        backlog = f"a full sync of the backlog ({self.writes:,} writes, {self.requests:,} requests)"
        if self.limit is None:
            return f"{backlog} is not limited"
        under = f"under the PDS's limits ({self.limit} requests / {self.window_s:.0f} s per IP), {backlog}"
        if self.seconds <= 0:
            return f"{under} fits within them"
        return f"{under} takes at least {duration(self.seconds)} ({self.bound})"


def estimate_sync(
    backlog: Sequence[PartitionBacklog], limit: int | None, window_s: float = DEFAULT_WINDOW_S
) -> SyncEstimate:
    """The requests a full sync of the backlog makes that the PDS counts (per partition: one applyWrites per
    200 creates, one upload per blob; one session per account; the reads of the repositories are getRepo,
    which the PDS does not count) and, under a per-IP `limit` of requests per
    `window_s` (None: not limited), the least time the reference PDS's limits allow: each spent allowance
    waits out its window (fixed windows, from the first call) before the next one opens."""
    writes = sum(part.creates for part in backlog)
    uploads = sum(part.blobs for part in backlog)
    points: dict[str, int] = {}
    for part in backlog:
        points[part.handle] = points.get(part.handle, 0) + CREATE_POINTS * part.creates
    requests = len(points) + sum(math.ceil(part.creates / MAX_WRITES) + part.blobs for part in backlog)
    if limit is None:
        return SyncEstimate(writes, requests, None, window_s)
    bounds = [
        (_waits(requests, limit, window_s), f"{requests:,} requests at {limit:,} per {window_s:.0f} s"),
        (_waits(uploads, UPLOADS_PER_DAY, 86400.0), f"{uploads:,} blob uploads at {UPLOADS_PER_DAY:,} a day"),
    ]
    for handle, spent in points.items():
        for window, allowed, per in WRITE_POINTS:
            bounds.append(
                (_waits(spent, allowed, window), f"{spent:,} write points of {handle} at {allowed:,} {per}")
            )
    seconds, bound = max(bounds, key=lambda b: b[0])
    return SyncEstimate(writes, requests, limit, window_s, seconds, bound if seconds > 0 else "")


def _waits(spent: int, allowed: int, window_s: float) -> float:
    """The windows `spent` calls or points wait out at `allowed` a window: all but the last one they use."""
    return max(0, math.ceil(spent / allowed) - 1) * window_s


def read_backlog(db: MongoDatabase, accounts: Accounts) -> list[PartitionBacklog]:
    """Per partition with a backlog: the items MongoDB wants (not removed, no problem) that are not linked to
    a record yet, read as the sync reads them (the media rules, grouped by owner as `owner_filter` does)."""
    handle_by_owner = {account.owner: account.handle for account in accounts.by_handle.values()}
    backlog = []
    for media, rules in MEDIA.items():
        unlinked: dict[str, int] = {}  # handle -> items with no record link yet
        for doc in read_all(db[rules.collection], {}, projection(media)):
            owner = doc.get("user") or None
            handle = handle_by_owner.get(owner) if isinstance(owner, str | None) else None
            if handle is None or (owner is None and not rules.may_be_anonymous) or not rules.is_item(doc):
                continue
            item = rules.normalise(doc)
            if item.wanted and item.problem is None and item.link is None:
                unlinked[handle] = unlinked.get(handle, 0) + 1
        for handle, creates in sorted(unlinked.items()):
            backlog.append(PartitionBacklog(handle, media, creates, creates * len(rules.blob_fields)))
    return backlog


def check_limits(doctor: Doctor) -> CheckResult:
    """Whether the PDS applies rate limits (the `ratelimit-*` headers of a describeServer sent without the
    bypass key), whether the key, when set, gets past them (the PDS neither limits nor counts a call carrying
    the right one: its answer has no such headers), and how long a full sync of the backlog takes under the
    limits it applies to us."""
    assert doctor.client is not None
    client = doctor.client
    try:
        plain = rate_limit_status(client.send("GET", DESCRIBE, bypass_limits=False).headers)
        keyed = rate_limit_status(client.send("GET", DESCRIBE).headers) if client.has_bypass_key else None
    except RateLimited as exc:
        return CheckResult("limits", "warn", f"the PDS applies rate limits and holds us now: {exc}")
    except (OperatorError, PdsError) as exc:
        return CheckResult("limits", "fail", f"describeServer failed: {exc}")
    facts = [_limits_fact(plain)]
    status, limited = "ok", plain
    if client.has_bypass_key and plain is None:
        facts.append(f"{RATELIMIT_BYPASS_ENV} is set, with nothing to bypass")
    elif client.has_bypass_key and keyed is None:
        facts.append(f"{RATELIMIT_BYPASS_ENV} gets past them (a call carrying it is not counted)")
        limited = None
    elif client.has_bypass_key:
        status = "fail"
        facts.append(
            f"{RATELIMIT_BYPASS_ENV} does not get past them (the PDS counted a call carrying it): set it to "
            "the PDS's PDS_RATE_LIMIT_BYPASS_KEY"
        )
    if doctor.db is None or doctor.accounts is None:
        facts.append("no estimate of the backlog's sync (the mongodb check failed)")
        return CheckResult("limits", status, "; ".join(facts))
    window = (limited.window_s if limited else None) or DEFAULT_WINDOW_S
    estimate = estimate_sync(
        read_backlog(doctor.db, doctor.accounts), limited.limit if limited else None, window
    )
    facts.append(estimate.line())
    if status == "ok" and estimate.seconds > 0:
        status = "warn"
        facts.append(f"set {RATELIMIT_BYPASS_ENV} to the PDS's PDS_RATE_LIMIT_BYPASS_KEY to sync past them")
    return CheckResult("limits", status, "; ".join(facts))


def _limits_fact(seen: RateLimitStatus | None) -> str:
    if seen is None:
        return "the PDS applies no rate limits (no ratelimit-* headers on describeServer)"
    per = f"/ {seen.window_s:.0f} s" if seen.window_s else "a window"
    return f"the PDS applies rate limits ({seen.limit} requests {per} per IP, {seen.remaining:,} left)"
