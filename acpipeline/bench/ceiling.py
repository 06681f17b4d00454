"""What the pipeline's full pass is set against: the records read back from the PDS, the thinnest client
writing them again (the ceiling), and the pipeline's blob stage alone (the derivation).

- Records are counted on the PDS after the full pass: listRecords of every account and collection.
- Ceiling: the same records and thumbnails (values from listRecords, blobs from getBlob, read after the
  full pass) written by the thinnest client to one fresh account per account that holds records: for each
  account, uploadBlob of its blobs then applyWrites of up to 200 records (and under the body limit),
  `CEILING_WORKERS` accounts at a time, directly to the PDS (no proxy). The accounts are created and each
  logs in before the timing: the pipeline's full pass does not log in either (its sessions come from the
  seeding). Those logins are timed on their own (`platform_ceiling_logins_s`): `strategies.write_ceiling`,
  which logs in inside its timing, would add them.
- Derivation alone (`platform_derive_s`, after the servers stopped): the pipeline's own blob stage
  (`derive_blobs`: fetching the images and ZIPs from the media server, thumbnails, tape encodes) over every
  wanted painting and tape of every account, into an empty derived-blob cache, with no Dagster and no PDS.
  The ceiling derives nothing; `platform_ceiling_s + platform_derive_s` is what the thinnest client would
  take if it had to make the blobs too (both are CPU-bound on the same cores)."""

from __future__ import annotations

import contextlib
import resource
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from acpipeline.bench.strategies import PreparedRecord, _login, _ok, write_records
from acpipeline.core.media import MEDIA
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_HEADER

if TYPE_CHECKING:
    from acpipeline.resources.pds import PdsClient

CEILING_WORKERS = 4  # accounts written at once by the ceiling
ACCOUNT_WORKERS = 8  # ceiling accounts created at once (untimed)
READ_WORKERS = 4  # accounts listed (and their blobs fetched) at once after the full pass


def _read_account(client: PdsClient, did: str, with_blobs: bool) -> list[PreparedRecord]:
    """The account's records as the pipeline wrote them, with the bytes of their blobs (getBlob)."""
    out = []
    for rules in MEDIA.values():
        for record in client.list_records(did, rules.nsid):
            value = record["value"]
            blobs: tuple[tuple[bytes, str], ...] = ()
            if with_blobs:
                blobs = tuple(
                    (client.get_blob(did, value[name]["ref"]["$link"]), value[name]["mimeType"])
                    for name in rules.blob_fields
                    if name in value
                )
            out.append(PreparedRecord(rules.nsid, record["uri"].rsplit("/", 1)[-1], value, blobs))
    return out


def read_records(
    pds_url: str, dids: list[str], with_blobs: bool = True, bypass_key: str | None = None
) -> dict[str, list[PreparedRecord]]:
    """Every account's records (and their blobs), `READ_WORKERS` accounts at a time; `bypass_key`: past the
    PDS's rate limits (else no key, whatever this process's environment says)."""
    from acpipeline.resources.pds import PdsClient

    client = PdsClient(pds_url, ratelimit_bypass_key=bypass_key or "")
    try:
        with ThreadPoolExecutor(READ_WORKERS) as pool:
            return dict(
                zip(dids, pool.map(lambda did: _read_account(client, did, with_blobs), dids), strict=True)
            )
    finally:
        client.close()


def _create_account(http: httpx.Client, handle: str, password: str, email: str) -> str:
    body = {"handle": handle, "password": password, "email": email}
    did: str = _ok(http.post("/xrpc/com.atproto.server.createAccount", json=body)).json()["did"]
    return did


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds so far of this process, its finished children, and the processes `pids`."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def run_ceiling(
    pds_url: str,
    prepared: list[list[PreparedRecord]],
    log: Callable[[str], None],
    pds_pid: int | None = None,
    bypass_key: str | None = None,
) -> dict[str, Any]:
    """Fresh accounts (untimed), their logins (timed apart), then the writes of every account (timed, with
    the CPU seconds of this process and the PDS); `bypass_key`: every call past the PDS's rate limits."""
    tag, password = secrets.token_hex(3), secrets.token_urlsafe(16)
    limits = httpx.Limits(max_connections=ACCOUNT_WORKERS * 2, max_keepalive_connections=ACCOUNT_WORKERS * 2)
    headers = {RATELIMIT_BYPASS_HEADER: bypass_key} if bypass_key else {}
    with httpx.Client(base_url=pds_url, timeout=300, limits=limits, headers=headers) as http:
        log(f"ceiling: creating {len(prepared)} fresh accounts ({ACCOUNT_WORKERS} at a time, untimed) ...")

        def create(n: int) -> str:
            return _create_account(http, f"c{n}x{tag}.test", password, f"c{n}x{tag}@example.com")

        with ThreadPoolExecutor(ACCOUNT_WORKERS) as pool:
            dids = list(pool.map(create, range(len(prepared))))
        started = time.perf_counter()
        with ThreadPoolExecutor(CEILING_WORKERS) as pool:
            tokens = list(pool.map(lambda did: _login(http, did, password), dids))
        logins_s = time.perf_counter() - started
        records = sum(len(r) for r in prepared)
        blobs = sum(len(b) for r in prepared for p in r for b, _ in p.blobs)
        log(
            f"ceiling: {records} records and {blobs / 1e6:.1f} MB of blobs to {len(dids)} accounts, "
            f"{CEILING_WORKERS} accounts at a time ..."
        )
        started, cpu = time.perf_counter(), _cpu_s([pds_pid] if pds_pid else [])
        with ThreadPoolExecutor(CEILING_WORKERS) as pool:
            list(pool.map(lambda job: write_records(http, *job), zip(dids, tokens, prepared, strict=True)))
        writes_s = time.perf_counter() - started
        cpu = _cpu_s([pds_pid] if pds_pid else []) - cpu
    return {
        "s": writes_s,
        "cpu_s": cpu,
        "logins_s": logins_s,
        "accounts": len(dids),
        "records": records,
        "blob_bytes": blobs,
    }


def run_derive(db: Any, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The blob stage alone over every wanted painting and tape of every account (see the module)."""
    from acpipeline.definitions import build_definitions
    from acpipeline.resources import resolved
    from acpipeline.sync.blobs import derive_blobs
    from acpipeline.sync.cache import DerivedCache
    from acpipeline.sync.extract import extract_owners, find_accounts

    owners = [account.owner for account in find_accounts(db).by_handle.values()]
    cache = DerivedCache(cache_dir)
    seconds, cpu_s, derived = 0.0, 0.0, 0
    with resolved(build_definitions(), "storage") as storage:
        for media in ("painting", "tape"):
            items = [item for found in extract_owners(db, MEDIA[media], owners).values() for item in found]
            log(f"derivation alone: {media}s of {len(owners)} accounts ...")
            started, cpu = time.perf_counter(), _cpu_s([])
            _, stats = derive_blobs(items, media, storage, cache)
            seconds += time.perf_counter() - started
            cpu_s += _cpu_s([]) - cpu
            derived += stats.derived
    log(f"derivation alone: {derived} paintings and tapes derived in {seconds:.1f} s")
    return {"s": seconds, "cpu_s": cpu_s, "items": derived}
