"""MongoDB, the PDS, a sample of accounts (sessions through `PdsClient.session`, which reuses the saved
ones), the shared state, ffmpeg and the Dagster instance with its daemon."""

from __future__ import annotations

import os
import subprocess
import time

from pymongo.errors import PyMongoError

from acpipeline.core.media import MEDIA
from acpipeline.core.tape_video.encode import ffmpeg_exe
from acpipeline.dagster_compat import daemon_heartbeats
from acpipeline.errors import OperatorError
from acpipeline.instance import get_instance
from acpipeline.operations.doctor.base import PDS_BUDGET_S, CheckResult, Doctor, time_ago, without_secrets
from acpipeline.resources import shared_state
from acpipeline.resources.pds import (
    PdsClient,
    PdsError,
    _safe_url,
)
from acpipeline.sync.extract import Account, Accounts, find_accounts

DAEMON_SILENT_S = 120.0  # four of Dagster's 30 s heartbeat intervals without one: the daemon is not running
ENCODERS = ("libx264", "aac")  # what tape videos are encoded with (core/tape_video/encode.py)
DESCRIBE = "com.atproto.server.describeServer"


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
        reason = without_secrets(str(exc), doctor.mongo.connection_string)
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


def sample_accounts(accounts: Accounts, size: int) -> list[Account]:
    """The art account (when it has one) and the first others by handle, `size` in all."""
    ordered = sorted(accounts.by_handle.values(), key=lambda a: (a.owner is not None, a.handle))
    return ordered[:size]


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
            f"{detail}; the daemon's last heartbeat was {time_ago(silent)} ago: sensor, schedule and "
            "backfills need dagster-daemon running",
        )
    return CheckResult("dagster", "ok", f"{detail}; daemon running (heartbeat {time_ago(silent)} ago)")


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
