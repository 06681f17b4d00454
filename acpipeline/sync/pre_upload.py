"""Blobs uploaded as soon as they are derived: in the blob stage, outside the `pds_writes` pool, so the
record stage finds them on the PDS instead of uploading them inside its pool slot right before each batch.

The blob stage (`PreUploader`) uploads the blobs of items never linked in MongoDB (records this sync will
create) while the other items are still being derived: each item's blobs go to a pool of
upload threads (`settings.upload_concurrency`) as its derivation ends, bounded in bytes in flight like the
record stage's uploads. It logs in with the account's persisted session (a login only when there is none);
when no session can be had, when the PDS holds the account's writes beyond the retry budget (its record
stage defers: no blob for a write the PDS would refuse), or when an upload fails, it leaves those uploads
to the record stage and does not fail. Nothing is uploaded in a dry run, nor when the run does not also
run the record stage. What it uploaded goes to the record stage in the blob stage's output
(`Derived.uploaded`: CID -> account DID and when the upload started; never bytes).

An uploaded blob that no record references yet is temporary: the PDS may garbage-collect it. The reference
PDS (`@atproto/pds` 0.5.35) has no collector of its own (temporary blobs stay until a write references
them: `dist/disk-blobstore.js`; on S3 under `tmp/`, for the bucket's lifecycle rules to expire), but
uploadBlob's lexicon allows deleting one "if it is not referenced within a time window (eg, minutes)". So
the record stage (`PreUploaded`) trusts a pre-upload only for `ACPIPELINE_PRE_UPLOAD_FRESH_S` (default 300 s)
after it started, uploads it again after that, and also uploads again, right before its write, any blob
that a record this sync updates or deletes references on the PDS (the PDS deletes a blob with the last
record that references it, pre-uploaded or not). A re-plan after a failed write uploads as it always did,
and a write the PDS refuses for a missing blob (BlobNotFound) is sent again once, after its blobs are
uploaded again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acpipeline.core.items import Blob, Derived, Item
from acpipeline.errors import OperatorError
from acpipeline.resources.pds import PdsClient, PdsError, RateLimited, Session
from acpipeline.settings import upload_concurrency
from acpipeline.sync.extract import Account

if TYPE_CHECKING:
    from dagster import DagsterRun

FRESH_ENV = "ACPIPELINE_PRE_UPLOAD_FRESH_S"
DEFAULT_FRESH_S = 300.0
RECORDS_ASSET = "atproto_records"
CLI_TAG = "acpipeline/cli"  # "dry-run" on the runs `acpipeline sync --dry-run` launches (sync/runner.py)


def fresh_s() -> float:
    """How long after its upload started a pre-uploaded blob is trusted to be on the PDS:
    `ACPIPELINE_PRE_UPLOAD_FRESH_S`, default 300 s; 0 turns pre-uploads off."""
    value = os.environ.get(FRESH_ENV) or str(DEFAULT_FRESH_S)
    try:
        seconds = float(value)
    except ValueError:
        raise OperatorError(f"{FRESH_ENV}={value!r} is not a number of seconds (0 turns it off)") from None
    return max(0.0, seconds)


def not_wanted_in(run: DagsterRun) -> str | None:
    """Why the run's blob stage must not upload anything (None: it may): a dry run (the record stage's
    `dry_run` config, or the CLI's tag), a run without the record stage, or the setting at 0."""
    ops = (getattr(run, "run_config", None) or {}).get("ops") or {}
    config = (ops.get(RECORDS_ASSET) or {}).get("config") or {}
    if config.get("dry_run") or run.tags.get(CLI_TAG) == "dry-run":
        return "dry run"
    selection = getattr(run, "asset_selection", None)  # None or empty: every asset of the job
    if selection and not any(key.to_user_string() == RECORDS_ASSET for key in selection):
        return f"{RECORDS_ASSET} is not in this run"
    if fresh_s() <= 0:
        return f"{FRESH_ENV}=0"
    return None


def never_linked(partitions: Iterable[tuple[Account | None, list[Item]]]) -> dict[str, Account]:
    """Item ref -> account, for the items whose record this sync will create: wanted, well-formed, and with
    no link in MongoDB. Items already linked (updates) upload in the record stage as before."""
    return {
        item.ref: account
        for account, items in partitions
        if account is not None
        for item in items
        if item.link is None and item.wanted and item.problem is None
    }


class _ByteBudget:
    """At most `limit` bytes of blobs read into memory at once (a larger blob goes alone)."""

    def __init__(self, limit: int) -> None:
        self._limit, self._used = limit, 0
        self._changed = threading.Condition()

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + size <= self._limit)
            self._used += size
        try:
            yield
        finally:
            with self._changed:
                self._used -= size
                self._changed.notify_all()


@dataclass
class PreUploadStats:
    """What the blob stage's pre-uploads did, and why they stopped or never started, for the asset's
    metadata."""

    blobs: int = 0
    bytes: int = 0
    accounts_without_session: int = 0
    accounts_held: int = 0  # whose writes the PDS holds beyond the retry budget: their partitions defer
    stopped: str | None = None  # why the stage stopped pre-uploading (the record stage uploads the rest)
    skipped: str | None = None  # why it did not pre-upload at all
    wait_s: float = 0.0  # how long the stage waited for its uploads once every item was derived

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"blobs_pre_uploaded": self.blobs, "blob_bytes_pre_uploaded": self.bytes}
        if self.blobs:
            out["pre_upload_wait_s"] = self.wait_s
        if self.accounts_without_session:
            out["pre_upload_accounts_without_session"] = self.accounts_without_session
        if self.accounts_held:
            out["pre_upload_accounts_held"] = self.accounts_held
        if self.stopped or self.skipped:
            out["pre_upload_stopped"] = self.stopped or self.skipped
        return out


@dataclass
class PreUploader:
    """The blob stage's uploads: `submit` each item's Derived as its derivation ends (from any thread),
    `finish` for what was uploaded, by item ref; `close` on the way out (drops what is still queued)."""

    client: PdsClient
    accounts: dict[str, Account]  # item ref -> account, for the items to pre-upload (`never_linked`)
    stats: PreUploadStats = field(default_factory=PreUploadStats)
    # What the stage should log (kept here: the uploads run in threads of their own).
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from acpipeline.sync.records import UPLOAD_BYTES_IN_FLIGHT  # records imports this module

        self._pool = ThreadPoolExecutor(upload_concurrency(), thread_name_prefix="pre-upload")
        self._budget = _ByteBudget(UPLOAD_BYTES_IN_FLIGHT)
        self._lock = threading.Lock()
        self._sessions: dict[str, Session | None] = {}
        self._session_locks: dict[str, threading.Lock] = {}
        self._keys: dict[str, list[tuple[str, str]]] = {}  # item ref -> its blobs' (did, cid)
        self._queued: set[tuple[str, str]] = set()
        self._uploaded: dict[tuple[str, str], float] = {}  # (did, cid) -> when its upload started

    def submit(self, item: Item, derived: Derived) -> None:
        account = self.accounts.get(item.ref)
        if account is None or not derived.blobs or derived.problem:
            return
        with self._lock:
            if self.stats.stopped:
                return
            keys = [(account.did, blob.cid) for blob in derived.blobs.values()]
            self._keys[item.ref] = keys
            todo = [b for b in derived.blobs.values() if (account.did, b.cid) not in self._queued]
            self._queued.update((account.did, b.cid) for b in todo)
        for blob in todo:
            try:
                self._pool.submit(self._upload, account, blob)
            except RuntimeError:  # closed: the stage is on its way out
                return

    def finish(self) -> dict[str, dict[str, tuple[str, float]]]:
        """Waits for the uploads; item ref -> {CID: (account DID, epoch seconds its upload started)} of
        each blob the PDS took."""
        started = time.monotonic()
        self._pool.shutdown(wait=True)
        self.stats.wait_s = round(time.monotonic() - started, 2)
        out: dict[str, dict[str, tuple[str, float]]] = {}
        for ref, keys in self._keys.items():
            done = {key[1]: (key[0], self._uploaded[key]) for key in keys if key in self._uploaded}
            if done:
                out[ref] = done
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _stop(self, reason: str) -> None:
        with self._lock:
            if self.stats.stopped is None:
                self.stats.stopped = reason
                self.messages.append(f"pre-uploads stopped, the record stage uploads the rest: {reason}")

    def _session(self, account: Account) -> Session | None:
        """The account's session (in memory, persisted, else a login), or None when none can be had, or
        when the PDS holds the account's writes beyond the retry budget (no blob is uploaded for a write the
        PDS would refuse: the record stage defers the partition): then its blobs are left to the record
        stage."""
        with self._lock:
            if account.did in self._sessions:
                return self._sessions[account.did]
            lock = self._session_locks.setdefault(account.did, threading.Lock())
        with lock:
            if account.did in self._sessions:
                return self._sessions[account.did]
            session: Session | None = None
            held, message = False, ""
            try:
                session = self.client.session(account.did, account.password)
                self.client.wait_to_write(session)  # waits within the retry budget, else RateLimited
            except RateLimited as exc:
                held, message = session is not None, f"{account.handle}: {exc}"
                session = None
            except (PdsError, OperatorError) as exc:  # refused, or the PDS unreachable
                held, message = False, f"no session for {account.handle}: {exc}"
                session = None
            with self._lock:
                self._sessions[account.did] = session
                if session is None:
                    if held:
                        self.stats.accounts_held += 1
                    else:
                        self.stats.accounts_without_session += 1
                    self.messages.append(f"{message}; its blobs are left to the record stage")
            return session

    def _upload(self, account: Account, blob: Blob) -> None:
        try:
            self._upload_one(account, blob)
        except Exception as exc:  # never the blob stage's failure: the record stage uploads what is left
            self._stop(f"{type(exc).__name__}: {exc}")

    def _upload_one(self, account: Account, blob: Blob) -> None:
        if self.stats.stopped:
            return
        session = self._session(account)
        if session is None or self.stats.stopped:
            return
        with self._budget.holding(blob.size):
            if self.stats.stopped:
                return
            started = time.time()
            try:
                answer = self.client.upload_blob(session, blob.read(), blob.mime_type)
            except RateLimited as exc:
                self._stop(f"the PDS's rate limit ({exc})")
                return
            except (PdsError, OperatorError, OSError) as exc:
                self._stop(f"an upload failed ({exc})")
                return
        got = answer.get("ref", {}).get("$link")
        if got != blob.cid:
            self._stop(f"uploadBlob answered CID {got}, expected {blob.cid}")
            return
        with self._lock:
            self._uploaded[(account.did, blob.cid)] = started
            self.stats.blobs += 1
            self.stats.bytes += blob.size


class PreUploaded:
    """The record stage's view of what the blob stage uploaded to its account (`Derived.uploaded`)."""

    def __init__(self, derived: dict[str, Derived], did: str) -> None:
        self._at: dict[str, float] = {}
        for got in derived.values():
            # getattr: an output an older version stored (a re-execution of the record stage) has none
            for cid, (owner, at) in getattr(got, "uploaded", {}).items():
                if owner == did:
                    self._at[cid] = min(at, self._at.get(cid, at))
        self._offered = False

    def first_attempt(self, dereferenced: set[str]) -> dict[str, float]:
        """The pre-uploads the record stage's first attempt may rely on (CID -> when its upload started):
        none whose CID a record this sync updates or deletes references on the PDS (`dereferenced`: the PDS
        deletes a blob with the last record that references it). A later attempt (a re-plan after a write
        that failed) gets none: it uploads what it needs, as without pre-uploads."""
        if self._offered:
            return {}
        self._offered = True
        return {cid: at for cid, at in self._at.items() if cid not in dereferenced}


def fresh(pre_uploaded: dict[str, float], now: float | None = None) -> set[str]:
    """The CIDs uploaded recently enough to be trusted on the PDS now (`fresh_s`)."""
    window, now = fresh_s(), time.time() if now is None else now
    return {cid for cid, at in pre_uploaded.items() if now - at < window}
