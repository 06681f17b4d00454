"""The platform bench's figures as Markdown table rows, against their targets."""

from __future__ import annotations

from typing import Any

from acpipeline.bench.backfill_pass import SYNC_ASSETS
from acpipeline.bench.ceiling import CEILING_WORKERS

TARGETS = {"noop_s": 120.0, "ceiling_ratio": 0.5, "runs_per_pass": 100, "peak_rss_mb": 1536.0}


def format_platform_table(r: dict[str, Any]) -> str:
    """The figures as Markdown table rows: figure, value, ratio / target (✓ met, ✗ missed)."""
    rows = [
        *_dataset_rows(r),
        *_pass_rows(r),
        *_ceiling_rows(r),
        (
            "`platform_peak_rss_mb`: webserver, daemon, code servers and runs, full pass (PSS)",
            r["platform_peak_rss_mb"],
            f"no-op pass {r['platform_noop_peak_rss_mb']}; target ≤ {TARGETS['peak_rss_mb']:.0f} "
            f"{mark(r['platform_peak_rss_mb'] <= TARGETS['peak_rss_mb'])}",
        ),
        *_request_rows(r),
        ("machine, date", r["machine"], r["date"]),
    ]
    return "\n".join(f"| {name} | {value} | {note} |" for name, value, note in rows)


def _dataset_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The dataset, the records on the PDS and the partitions."""
    d = r["dataset"]
    documents = ", ".join(f"{n} {name}" for name, n in d["documents"].items())
    expected = ", ".join(f"{n} {name}" for name, n in d["records_expected"].items())
    return [
        (
            "dataset",
            f"{r.get('size', d['size'])}",
            f"{d['users']} users, {d['accounts']} accounts; {documents}",
        ),
        (
            "`platform_records`: records on the PDS after the full pass",
            r["platform_records"],
            f"{r['platform_records_expected']} expected ({expected})",
        ),
        ("`platform_partitions`: partitions in each backfill", r["platform_partitions"], ""),
    ]


def _pass_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The two passes: their time, the no-op pass's writes, their runs and the runs' start."""
    full, noop = r["platform_full_s"], r["platform_noop_s"]
    most_runs = max(r["platform_full_runs"], r["platform_noop_runs"])
    return [
        (
            "`platform_full_s`: backfill from an empty PDS, launch to COMPLETED",
            full,
            f"{r['platform_full_runs']} runs",
        ),
        (
            "`platform_noop_s`: the same backfill again, nothing changed",
            noop,
            f"{r['platform_noop_runs']} runs; no-op/full = {noop / full if full else 0:.2f}; "
            f"target ≤ {TARGETS['noop_s']:.0f} s {mark(noop <= TARGETS['noop_s'])}",
        ),
        (
            "`platform_noop_writes`: writes the PDS received in the no-op pass",
            r["platform_noop_writes"],
            f"target 0 {mark(r['platform_noop_writes'] == 0)}",
        ),
        (
            "runs per pass (full / no-op)",
            f"{r['platform_full_runs']} / {r['platform_noop_runs']}",
            f"target ≤ {TARGETS['runs_per_pass']} {mark(most_runs <= TARGETS['runs_per_pass'])}",
        ),
        (
            "run start, launch to RUN_START, p50 / p90 (full; no-op)",
            " / ".join(f"{r['passes']['full'].get(f'run_start_s_{p}', 0):.2f}" for p in ("p50", "p90")),
            " / ".join(f"{r['passes']['noop'].get(f'run_start_s_{p}', 0):.2f}" for p in ("p50", "p90"))
            + f" s; {r.get('launcher', 'default')} run launcher",
        ),
    ]


def _ceiling_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The ceiling and the derivation alone, against the full pass."""
    full, ceiling = r["platform_full_s"], r["platform_ceiling_s"]
    ratio = ceiling / full if full else 0.0
    return [
        (
            "`platform_ceiling_s`: same records and blobs, uploadBlob + applyWrites of 200, "
            f"{r.get('platform_ceiling_workers', CEILING_WORKERS)} accounts at a time",
            ceiling,
            f"ceiling/full = {ratio:.2f} (target ≥ {TARGETS['ceiling_ratio']}) "
            f"{mark(ratio >= TARGETS['ceiling_ratio'])}; one login per account would add "
            f"{r['platform_ceiling_logins_s']} s",
        ),
        (
            "`platform_derive_s`: the blob stage alone (thumbnails, tape MP4s), no Dagster, no PDS",
            r["platform_derive_s"],
            f"{r['platform_derive_items']} paintings and tapes, {r.get('platform_derive_cpu_s')} CPU s "
            f"(the ceiling's writes: {r.get('platform_ceiling_cpu_s')} CPU s, client and PDS); "
            f"(ceiling + derivation)/full = {(ceiling + r['platform_derive_s']) / full if full else 0:.2f}",
        ),
    ]


def _short(method: str) -> str:
    return method.removeprefix("com.atproto.").removeprefix("storage:")


def _by_method(counts: dict[str, int]) -> str:
    return ", ".join(f"{_short(method)} {n}" for method, n in counts.items()) or "none"


def _request_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The rows of the setup, the requests, the planned events, the rate limit and the load (results
    written before they were measured have none)."""
    if "platform_requests" not in r:
        return []
    passes = r["passes"]
    network = f"{r.get('rtt_ms') or 0:g} ms round trip, {r.get('bandwidth_mbit') or 'unlimited'} Mbit/s"
    given = {k: v for k, v in r.get("dagster_env", {}).items() if v is not None}
    rows: list[tuple[str, Any, str]] = [
        (
            "layout, run launcher, network (PDS and storage), PDS rate limits",
            f"{r['layout']}; {r.get('launcher', 'default')}; {network}; limits {r['pds_limits']}",
            f"Dagster's settings given to the servers: {given or 'none'}",
        ),
    ]
    for key, label in (("full", "full"), ("noop", "no-op")):
        counts = r["platform_requests"][key]
        rows.append(
            (
                f"`platform_requests`, {label} pass: PDS + storage",
                f"{counts['pds_total']} + {counts['storage_total']}",
                f"PDS: {_by_method(counts['pds'])}; storage: {_by_method(counts['storage'])}",
            )
        )
    rows += [
        (
            "`platform_requests_per_record`: full pass's PDS requests per record on the PDS",
            r["platform_requests_per_record"],
            f"no-op pass: {r['platform_noop_pds_requests_per_account']} PDS requests per account",
        ),
    ]
    planned = r["platform_planned_events_per_run"]
    assets = len(SYNC_ASSETS)
    fast = all(p["max"] == assets for p in planned.values() if p["runs"])
    rows.append(
        (
            "`platform_planned_events_per_run`: ASSET_MATERIALIZATION_PLANNED per run, max (total)",
            " / ".join(f"{p['max']} ({p['total']})" for p in planned.values()),
            f"full / no-op; one per asset ({assets}) with nothing exported {mark(fast)}",
        )
    )
    floor, over = r["platform_floor_s"], r["platform_time_over_floor"]
    rows.append(
        (
            "`platform_floor_s`: the PDS's global limit (10 requests/s) on the pass's requests, full / no-op",
            f"{floor['full']} / {floor['noop']}",
            f"time/floor {over['full']} / {over['noop']}; deferred partitions "
            f"{r['platform_deferred_partitions']['full']} / {r['platform_deferred_partitions']['noop']}; "
            f"429s {passes['full']['requests']['pds_429']} / {passes['noop']['requests']['pds_429']}",
        )
    )
    rows.append(
        (
            "load average (1, 5, 15 min) before / after, full; no-op",
            f"{passes['full'].get('loadavg_before')} / {passes['full'].get('loadavg_after')}; "
            f"{passes['noop'].get('loadavg_before')} / {passes['noop'].get('loadavg_after')}",
            "others' work on the machine shows here",
        )
    )
    return rows


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"
