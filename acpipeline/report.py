"""What the command line prints about a sync: the per-partition table, its totals, and progress while it
runs (a live bar on a terminal, a plain line now and then in cron, CI or a pipe)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from acpipeline.sync.outcome import COUNTS

if TYPE_CHECKING:  # the command line imports this module before it needs Dagster
    from acpipeline.sync.runner import PartitionResult

COLUMNS = ["handle", "media", *COUNTS, "duration_s"]
# Seconds between the plain progress lines when the output is not a terminal.
PLAIN_EVERY_S = float(os.environ.get("ACPIPELINE_PROGRESS_SECONDS", "30"))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as plain text under `columns`, left-aligned, `-` for None; `(nothing)` when there are no
    rows."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns} if rows else {}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)] if rows else ["(nothing)"]
    for row in rows:
        lines.append(
            "  ".join(
                str(row.get(c, "") if row.get(c) is not None else "-").ljust(widths[c]) for c in columns
            )
        )
    return "\n".join(lines)


def status_word(row: dict[str, Any]) -> str:
    """The status column of a sync row: FAILED, CHECK FAILED, or which kind of success (unchanged, deferred,
    dry run, ok)."""
    if not row["ok"]:
        return "FAILED"
    written = sum(row.get(n) or 0 for n in ("created", "updated", "deleted"))
    if not row["desired"] and not written and not row["failed"] and not row["planned"]:
        return "nothing to sync"
    if row["skipped"]:
        return "unchanged since the last sync"
    if row.get("proven_converged"):
        return "unchanged"
    if row.get("deferred_until"):
        return f"deferred until {row['deferred_until'][11:16]} UTC (rate limit)"
    if row["planned"]:  # only a dry run plans without writing
        return "dry run"
    if row["check_passed"] is False:
        return "CHECK FAILED"
    return f"ok, {row['failed']} failed" if row["failed"] else "ok"


@dataclass
class Totals:
    """A sync's figures summed over its partitions, for the totals line and the progress bar."""

    accounts: int = 0
    partitions: int = 0
    run: int = 0
    skipped: int = 0  # proven unchanged since the last sync, not run
    empty: int = 0  # nothing on either side
    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_in_mongodb: int = 0  # records kept that stand for no MongoDB document (KidLisp's own store has them)
    failed_items: int = 0
    failed_partitions: int = 0
    deferred: int = 0  # stopped by the PDS's rate limit until `deferred_until` (ISO)
    deferred_until: str = ""

    @classmethod
    def of(cls, results: list[PartitionResult]) -> Totals:
        totals = cls(accounts=len({r.handle for r in results}), partitions=len(results))
        for result in results:
            totals.failed_partitions += not result.ok
            totals.run += not result.skipped
            outcome = result.outcome
            if outcome is None:
                continue
            empty = result.skipped and not outcome.desired
            totals.empty += empty
            totals.skipped += result.skipped and not empty
            totals.created += outcome.created
            totals.updated += outcome.updated
            totals.deleted += outcome.deleted
            totals.not_in_mongodb += outcome.not_in_mongodb
            totals.failed_items += outcome.failed
            if outcome.deferred_until:
                totals.deferred += 1
                totals.deferred_until = max(totals.deferred_until, outcome.deferred_until)
        return totals

    @property
    def written(self) -> int:
        return self.created + self.updated + self.deleted

    def line(self, elapsed_s: float) -> str:
        failed = f", {self.failed_partitions} partitions FAILED" if self.failed_partitions else ""
        if self.deferred:
            failed += (
                f", {_n(self.deferred, 'partition')} deferred by the PDS's rate limit until "
                f"{self.deferred_until[11:16]} UTC (the sensor resumes them then)"
            )
        parts = [f"{self.run} run"]
        parts += [f"{self.skipped} unchanged since the last sync"] if self.skipped else []
        parts += [f"{self.empty} with nothing to sync"] if self.empty else []
        kept = f", {self.not_in_mongodb} kept that MongoDB does not have" if self.not_in_mongodb else ""
        return (
            f"{_n(self.accounts, 'account')}, {_n(self.partitions, 'partition')} "
            f"({', '.join(parts)}): "
            f"{self.created} created, {self.updated} updated, {self.deleted} deleted{kept}, "
            f"{_n(self.failed_items, 'failed item')}{failed}, in {elapsed_s:.1f} s"
        )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_sync(
    results: list[PartitionResult],
    without_account: list[str],
    elapsed_s: float,
    quiet: bool = False,
    out: TextIO = sys.stdout,
) -> None:
    """The table (unless `quiet`), the failures and plans, then the totals line."""
    rows = [r.row() for r in results]
    if not quiet:
        for row in rows:
            row["status"] = status_word(row)
        print(table(rows, COLUMNS + ["status"]), file=out)
    for row in rows:
        for failure in row["failed_items"]:
            print(f"  failed {row['handle']} {row['media']} {failure['ref']}: {failure['reason']}", file=out)
        for write in row["planned"]:
            print(
                f"  plan {row['handle']} {row['media']} {write['action']} {write['rkey']}: {write['reason']}",
                file=out,
            )
        if row["error"]:
            print(f"  error {row['handle']} {row['media']}: {row['error']}", file=out)
    if without_account and not quiet:
        shown = ", ".join(without_account[:10])
        extra = len(without_account) - 10
        more = f" and {extra} more (--json lists them all)" if extra > 0 else ""
        who = (
            "user has no ATProto account and was"
            if len(without_account) == 1
            else "users have no ATProto account and were"
        )
        print(f"{len(without_account)} {who} skipped: {shown}{more}", file=out)
    verb = "dry run of " if any(r.dry_run for r in results) else "synced "
    print(verb + Totals.of(results).line(elapsed_s), file=out)


class SyncProgress:
    """Partitions done out of the total, records written, failed items, elapsed time and an estimate: a
    live bar on a terminal (stderr), a plain line every PLAIN_EVERY_S seconds otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.plain_every_s = plain_every_s
        self.started = self.last_line = time.monotonic()
        self.results: list[PartitionResult] = []
        self.bar: RichProgress | None = None
        self.task: Any = None

    def __call__(self, finished: list[PartitionResult], total: int) -> None:
        self.results += finished
        totals = Totals.of(self.results)
        summary = f"{totals.written} records written, {_n(totals.failed_items, 'failed item')}"
        if self.live:
            if self.bar is None:
                self.bar = RichProgress(
                    TextColumn("syncing"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("partitions · {task.fields[summary]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=Console(file=self.stream),
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task("sync", total=total, summary=summary)
            self.bar.update(self.task, completed=len(self.results), summary=summary)
            return
        now = time.monotonic()
        if now - self.last_line < self.plain_every_s or len(self.results) >= total:
            return
        self.last_line = now
        elapsed = now - self.started
        done, ran = len(self.results), totals.run  # proven ones finish at once: estimate from the runs
        eta = f", about {elapsed / ran * (total - done):.0f} s left" if ran else ""
        print(
            f"progress: {done}/{total} partitions, {summary}, {elapsed:.0f} s elapsed{eta}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_status(rows: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """Per partition, then per account, then one line over all: items MongoDB wants vs records on the PDS
    (of which `not_in_mongodb` are kept though MongoDB has no document for them)."""
    columns = ["desired", "on_pds", "not_in_mongodb"]
    print(table(rows, ["handle", "media", *columns]), file=out)
    accounts: dict[str, dict[str, int]] = {}
    for row in rows:
        sums = accounts.setdefault(row["handle"], dict.fromkeys(columns, 0))
        for column in columns:
            sums[column] += row[column]
    print("\nper account:", file=out)
    print(table([{"handle": h, **sums} for h, sums in accounts.items()], ["handle", *columns]), file=out)
    differ = [r for r in rows if r["desired"] != r["on_pds"] - r["not_in_mongodb"]]
    kept = sum(r["not_in_mongodb"] for r in rows)
    print(
        f"{_n(len(accounts), 'account')}: {sum(r['desired'] for r in rows)} items to mirror, "
        f"{sum(r['on_pds'] for r in rows)} records on the PDS"
        + (f" ({kept} kept that MongoDB does not have)" if kept else "")
        + f"; {len(differ)} of {len(rows)} partitions differ"
        + (" (acpipeline sync brings them in step)" if differ else ""),
        file=out,
    )
