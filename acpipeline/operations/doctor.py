"""`acpipeline doctor`: the configuration checked end to end, one result per check.

Each check is a small function returning a `CheckResult` (`ok`, a warning, a failure naming the setting to
fix, or skipped because a check it needs failed). They run in order: MongoDB, the PDS, a sample of accounts
(sessions through `PdsClient.session`, which reuses the saved ones, so repeated runs spend no logins), the
PDS's rate limits (whether it applies them, whether the bypass key gets past them, and how long the backlog's
sync takes under them), storage (a few real media URLs), ffmpeg, and the Dagster instance with its daemon.
Passwords, tokens and the bypass key never reach a result.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dagster import Definitions
from pymongo.errors import PyMongoError

from acpipeline.core.batches import MAX_WRITES
from acpipeline.core.items import Item, ItemProblem
from acpipeline.core.media import MEDIA, PAINTING, TAPE
from acpipeline.core.tape_video.encode import ffmpeg_exe
from acpipeline.dagster_compat import daemon_heartbeats
from acpipeline.errors import OperatorError
from acpipeline.instance import get_instance
from acpipeline.operations.fingerprint import projection
from acpipeline.resources import resolved, shared_state
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.pds import (
    PdsClient,
    PdsError,
    RateLimited,
    RateLimitStatus,
    _safe_url,
    rate_limit_status,
)
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV
from acpipeline.resources.storage import FetchProblem, StorageResource
from acpipeline.sync.extract import Account, Accounts, find_accounts, owner_filter, read_all

DEFAULT_SAMPLE = 3
PDS_BUDGET_S = 20.0  # retries of one PDS call: a doctor answers in seconds, not the sync's two minutes
STORAGE_TRIES = 3  # documents tried per kind of media URL before calling the template wrong
DOCUMENTS_READ = 20  # documents read per kind to find those tries among (some are nuked or broken)
DAEMON_SILENT_S = 120.0  # four of Dagster's 30 s heartbeat intervals without one: the daemon is not running
ENCODERS = ("libx264", "aac")  # what tape videos are encoded with (core/tape_video/encode.py)
WORDS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}
DESCRIBE = "com.atproto.server.describeServer"
# The reference PDS's limits that a describeServer answer does not show (@atproto/pds: dist/rate-limits.js,
# and uploadBlob's own limit): write points per account (a create costs 3), blob uploads per IP.
CREATE_POINTS = 3
WRITE_POINTS = ((3600.0, 5000, "an hour"), (86400.0, 35000, "a day"))
UPLOADS_PER_DAY = 1000
DEFAULT_WINDOW_S = 300.0  # the per-IP window, when `ratelimit-policy` does not say


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report; `status` is "ok", "warn", "fail" or "skipped"."""

    check: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        """Passed (a warning passes: the CLI works, something may be missing)."""
        return self.status in ("ok", "warn")

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "status": self.status, "detail": self.detail}

    def line(self) -> str:
        return f"{WORDS[self.status]:<6}{self.check:<12}{self.detail}"


@dataclass
class Doctor:
    """The configured resources and what the earlier checks learned, for the later ones."""

    mongo: MongoResource
    pds_url: str | None
    storage: StorageResource
    sample: int = DEFAULT_SAMPLE
    db: MongoDatabase | None = None
    accounts: Accounts | None = None
    client: PdsClient | None = None


def check_mongodb(doctor: Doctor) -> CheckResult:
    """Reachable, the users and media collections present, and how many users have an ATProto account."""
    where = doctor.mongo.describe()
    try:
        db = doctor.mongo.db()
        names = set(db.list_collection_names())
        if "users" not in names:
            fix = "check MONGODB_NAME" + (
                ", set MONGODB_CONNECTION_STRING to the platform's MongoDB, or seed the embedded store "
                "(acpipeline demo --seed-only)"
                if doctor.mongo.is_embedded
                else ""
            )
            return CheckResult("mongodb", "fail", f"{where} has no users collection: {fix}")
        accounts = find_accounts(db)
    except OperatorError as exc:
        return CheckResult("mongodb", "fail", str(exc))
    except ValueError as exc:  # pymongo's URI parser raises some mistakes (a bad port) as plain ValueError
        reason = _without_secrets(str(exc), doctor.mongo.connection_string)
        return CheckResult(
            "mongodb", "fail", f"MONGODB_CONNECTION_STRING is not a valid MongoDB URI ({reason})"
        )
    except PyMongoError as exc:
        return CheckResult(
            "mongodb",
            "fail",
            f"{where} cannot be read ({type(exc).__name__}): check MONGODB_CONNECTION_STRING and its user's "
            "rights",
        )
    doctor.db, doctor.accounts = db, accounts
    expected = ["users", *dict.fromkeys(rules.collection for rules in MEDIA.values())]
    missing = [name for name in expected if name not in names]
    detail = (
        f"{where}, {len(expected) - len(missing)} of {len(expected)} collections, "
        f"{len(accounts.by_handle)} users with accounts"
    )
    if missing:
        return CheckResult(
            "mongodb", "warn", f"{detail}; no {', '.join(missing)} yet (fine while the platform has none)"
        )
    return CheckResult("mongodb", "ok", detail)


def check_pds(doctor: Doctor) -> CheckResult:
    """Answers describeServer; its version (from `/xrpc/_health`) and blobUploadLimit when it tells them."""
    if not doctor.pds_url:
        return CheckResult("pds", "fail", "PDS_URL is not set: set PDS_URL to the PDS's URL")
    url = _safe_url(doctor.pds_url)
    try:
        client = PdsClient(doctor.pds_url, timeout_s=PDS_BUDGET_S, retry_budget_s=PDS_BUDGET_S)
    except OperatorError as exc:  # a bypass key no header can carry: the message names the setting
        return CheckResult("pds", "fail", str(exc))
    try:
        info = client.describe_server()
    except OperatorError as exc:  # no answer at all, or not an http(s) URL: the message names PDS_URL
        client.close()
        return CheckResult("pds", "fail", str(exc))
    except (PdsError, ValueError) as exc:  # ValueError: an answer that is not JSON, so not a PDS
        client.close()
        reason = str(exc) if isinstance(exc, PdsError) else "its answer is not JSON"
        return CheckResult(
            "pds", "fail", f"{url} does not answer describeServer as a PDS ({reason}): check PDS_URL"
        )
    doctor.client = client
    facts = [f"{url} answers", f"DID {info.get('did', '?')}"]
    try:
        version = client.call("GET", "_health").get("version")
    except (PdsError, ValueError):  # `_health` is the reference PDS's; another server may lack it
        version = None
    if version:
        facts.append(f"version {version}")
    limit = info.get("blobUploadLimit")
    facts.append(f"blobUploadLimit {limit:,} bytes" if isinstance(limit, int) else "no blobUploadLimit")
    return CheckResult("pds", "ok", ", ".join(facts))


def check_accounts(doctor: Doctor) -> CheckResult:
    """A sample of the accounts (the art account always among them) opens a session the PDS accepts."""
    assert doctor.accounts is not None and doctor.client is not None
    chosen = sample_accounts(doctor.accounts, doctor.sample)
    if not chosen:
        return CheckResult(
            "accounts", "warn", "no user in MongoDB has an ATProto account (atproto.did, handle, password)"
        )
    refused: list[str] = []
    failed: list[str] = []
    for account in chosen:
        try:
            session = doctor.client.session(account.did, account.password)
            # A saved session opens without a call: one authenticated call proves the PDS accepts it
            # (an expired or revoked one is refreshed, or the password used, on the way).
            doctor.client.call("GET", "com.atproto.server.getSession", session=session)
        except PdsError as exc:
            if exc.status in (400, 401):
                refused.append(f"{account.handle} ({exc.error or exc.status})")
            else:
                failed.append(f"{account.handle}: {exc}")
    if refused:
        return CheckResult(
            "accounts",
            "fail",
            f"the PDS refused the login of {', '.join(refused)}: check atproto.password (and atproto.did) "
            f"of {'that user' if len(refused) == 1 else 'those users'} in MongoDB",
        )
    if failed:
        return CheckResult("accounts", "fail", f"no session for {'; '.join(failed)}")
    handles = ", ".join(account.handle for account in chosen)
    return CheckResult(
        "accounts",
        "ok",
        f"{len(chosen)} of {len(doctor.accounts.by_handle)} accounts open a session: {handles}",
    )


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
        return f"{under} takes at least {_duration(self.seconds)} ({self.bound})"


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


def sample_accounts(accounts: Accounts, size: int) -> list[Account]:
    """The art account (when it has one) and the first others by handle, `size` in all."""
    ordered = sorted(accounts.by_handle.values(), key=lambda a: (a.owner is not None, a.handle))
    return ordered[:size]


def _image_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(PAINTING.image_file(item))


def _tape_zip_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(TAPE.zip_file(item))


@dataclass(frozen=True)
class _UrlKind:
    """One kind of media URL the storage check tries, and the setting that builds it."""

    name: str
    media: str
    anonymous: bool
    setting: str
    url: Callable[[StorageResource, Item], str]


URL_KINDS = (
    _UrlKind("painting image", "painting", False, "ACPIPELINE_IMAGE_URL", _image_url),
    _UrlKind("anonymous painting image", "painting", True, "ACPIPELINE_GUEST_IMAGE_URL", _image_url),
    _UrlKind("tape ZIP", "tape", False, "ACPIPELINE_ZIP_URL", _tape_zip_url),
)


def check_storage(doctor: Doctor) -> CheckResult:
    """Real documents' media URLs, built by the storage resource, answer a HEAD."""
    tried = [_try_urls(doctor, kind) for kind in URL_KINDS]
    failed = [r.detail for r in tried if r.status == "fail"]
    if failed:
        return CheckResult("storage", "fail", "; ".join(failed))
    answered = [r for r in tried if r.status == "ok"]
    if not answered:
        return CheckResult("storage", "warn", "no painting or tape in MongoDB to try a storage URL with")
    untried = [r.check for r in tried if r.status == "skipped"]
    hosts = dict.fromkeys(urlsplit(r.detail).netloc for r in answered)
    detail = f"{_and([r.check for r in answered])} answer (at {', '.join(hosts)})"
    return CheckResult("storage", "ok", detail + (f" (no {_and(untried)} to try)" if untried else ""))


def _try_urls(doctor: Doctor, kind: _UrlKind) -> CheckResult:
    """The kind's first URL in storage ("ok", with it as detail), what is wrong with its URLs ("fail"), or
    "skipped" when no document gives one to try."""
    assert doctor.db is not None
    rules = MEDIA[kind.media]
    query = owner_filter(None) if kind.anonymous else {"user": {"$exists": True, "$nin": [None, ""]}}
    urls: list[str] = []
    for doc in doctor.db[rules.collection].find(query).limit(DOCUMENTS_READ):
        if not rules.is_item(doc):  # a painting in progress has no file in storage yet
            continue
        item = rules.normalise(doc)
        if item.problem or item.removed:
            continue
        try:
            urls.append(kind.url(doctor.storage, item))
        except ItemProblem:  # a document storage cannot hold (a bucket not configured): not this check's
            continue
        except OperatorError as exc:  # the template itself: a placeholder storage URLs do not fill
            return CheckResult(kind.name, "fail", str(exc))
        if len(urls) == STORAGE_TRIES:
            break
    if not urls:
        return CheckResult(kind.name, "skipped", "")
    for url in urls:
        try:
            if doctor.storage.exists(url):
                return CheckResult(kind.name, "ok", url)
        except FetchProblem as exc:
            return CheckResult(kind.name, "fail", f"{kind.name}: {exc}: check {kind.setting}")
    return CheckResult(
        kind.name,
        "fail",
        f"none of {len(urls)} {kind.name}s tried is in storage (e.g. {_host_path(urls[0])}): "
        f"check {kind.setting}",
    )


def check_ffmpeg() -> CheckResult:
    """ffmpeg runs and has the encoders tape videos need."""
    try:
        exe = ffmpeg_exe()
    except (ImportError, RuntimeError):  # imageio-ffmpeg missing, or without a binary for this machine
        return CheckResult("ffmpeg", "fail", "no ffmpeg found: set FFMPEG_BINARY to an ffmpeg with libx264")
    source = "FFMPEG_BINARY" if os.environ.get("FFMPEG_BINARY") else "imageio-ffmpeg's"
    try:
        version = _ffmpeg(exe, "-version").splitlines()[0].split()
        listed = [line.split() for line in _ffmpeg(exe, "-encoders").splitlines()]
        encoders = {fields[1] for fields in listed if len(fields) > 1}
    except (OSError, subprocess.SubprocessError) as exc:
        return CheckResult(
            "ffmpeg", "fail", f"{source} ffmpeg {exe} does not run ({type(exc).__name__}): set FFMPEG_BINARY"
        )
    missing = [name for name in ENCODERS if name not in encoders]
    if missing:
        return CheckResult(
            "ffmpeg",
            "fail",
            f"{source} ffmpeg {exe} has no {' or '.join(missing)} encoder: set FFMPEG_BINARY to one that has",
        )
    release = version[2] if len(version) > 2 else "(version unknown)"
    return CheckResult("ffmpeg", "ok", f"{source} ffmpeg {release} at {exe}, with {' and '.join(ENCODERS)}")


def _ffmpeg(exe: str, option: str) -> str:
    done = subprocess.run(
        [exe, "-hide_banner", option], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def check_dagster() -> CheckResult:
    """The instance opens; its storage; whether a daemon (sensor, schedule, backfills) is running."""
    try:
        instance = get_instance()
        runs = type(instance.run_storage).__name__
        beats = daemon_heartbeats(instance)
    except Exception as exc:
        # A bad dagster.yaml or database fails in many types; only the type is shown, since a database
        # error can quote its URL with the password.
        home = os.environ.get("DAGSTER_HOME") or ".dagster_home"
        return CheckResult(
            "dagster",
            "fail",
            f"the Dagster instance in {home} does not open ({type(exc).__name__}): check DAGSTER_HOME and "
            "its dagster.yaml (DAGSTER_PG_URL for PostgreSQL)",
        )
    kind = "PostgreSQL" if "Postgres" in runs else "SQLite" if "Sqlite" in runs else runs
    detail = f"{kind} ({runs}) in {os.environ['DAGSTER_HOME']}"
    if not beats:
        return CheckResult(
            "dagster",
            "warn",
            f"{detail}; no daemon has run: sensor, schedule and backfills need dagster-daemon",
        )
    silent = time.time() - max(beats.values())
    if silent > DAEMON_SILENT_S:
        return CheckResult(
            "dagster",
            "warn",
            f"{detail}; the daemon's last heartbeat was {_ago(silent)} ago: sensor, schedule and backfills "
            "need dagster-daemon running",
        )
    return CheckResult("dagster", "ok", f"{detail}; daemon running (heartbeat {_ago(silent)} ago)")


def check_state(doctor: Doctor) -> CheckResult:
    """Where the state runs share lives (acpipeline.resources.shared_state), and that it is reachable: the
    MongoDB collections with `ACPIPELINE_SHARED_STATE=mongodb`, a writable `ACPIPELINE_CACHE_DIR`."""
    try:
        in_mongodb = shared_state.in_mongodb()
    except OperatorError as exc:
        return CheckResult("state", "fail", str(exc))
    facts = []
    if in_mongodb:
        try:
            sessions = shared_state.collection(shared_state.SESSIONS).count_documents({})
        except PyMongoError as exc:
            return CheckResult(
                "state", "fail", f"MongoDB refused the shared state ({type(exc).__name__}): check MongoDB"
            )
        facts.append(f"sessions, throttle and marks in MongoDB ({sessions} sessions saved)")
    else:
        facts.append("sessions, throttle and marks under ACPIPELINE_HOME (this machine only)")
    cache = shared_state.cache_dir()
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            probe = cache / f".doctor-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return CheckResult(
                "state",
                "fail",
                f"{shared_state.CACHE_DIR_ENV} {cache} is not writable ({exc.strerror}): mount the shared "
                "volume there, or unset it",
            )
        facts.append(f"derived-blob cache in {cache}")
    else:
        facts.append("derived-blob cache under ACPIPELINE_HOME")
    return CheckResult("state", "ok", "; ".join(facts))


# The checks in order, each with the checks it needs to have passed.
CHECKS: tuple[tuple[str, Callable[[Doctor], CheckResult], tuple[str, ...]], ...] = (
    ("mongodb", check_mongodb, ()),
    ("pds", check_pds, ()),
    ("state", check_state, ("mongodb",)),
    ("accounts", check_accounts, ("mongodb", "pds", "state")),
    ("limits", check_limits, ("pds",)),
    ("storage", check_storage, ("mongodb",)),
    ("ffmpeg", lambda _: check_ffmpeg(), ()),
    ("dagster", lambda _: check_dagster(), ()),
)


def run_checks(doctor: Doctor) -> list[CheckResult]:
    """Every check in order; one whose prerequisite failed is skipped, naming it."""
    results: dict[str, CheckResult] = {}
    try:
        for name, check, needs in CHECKS:
            failed = [need for need in needs if not results[need].ok]
            if failed:
                results[name] = CheckResult(name, "skipped", f"skipped: the {failed[0]} check failed")
            else:
                results[name] = check(doctor)
    finally:
        if doctor.client is not None:
            doctor.client.close()
    return list(results.values())


def run_doctor(defs: Definitions, sample: int = DEFAULT_SAMPLE) -> list[CheckResult]:
    """The checks with the resources the definitions configure (from the environment)."""
    with (
        resolved(defs, "mongo") as mongo,
        resolved(defs, "pds") as pds,
        resolved(defs, "storage") as storage,
    ):
        return run_checks(Doctor(mongo, pds.url, storage, sample))


def summary(results: list[CheckResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in WORDS}
    if counts["fail"]:
        return (
            f"{counts['fail']} of {len(results)} checks failed"
            + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
            + ": fix the FAIL lines above"
        )
    warned = f" ({counts['warn']} with a warning)" if counts["warn"] else ""
    return f"all {len(results)} checks passed{warned}"


def _without_secrets(text: str, connection_string: str | None) -> str:
    """`text` with the connection string and its user:password part left out."""
    if not connection_string:
        return text
    userinfo = connection_string.split("://", 1)[-1].rpartition("@")[0]
    for secret in (connection_string, userinfo):
        if secret:
            text = text.replace(secret, "…")
    return text


def _host_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}"[:160]


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _duration(seconds: float) -> str:
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
