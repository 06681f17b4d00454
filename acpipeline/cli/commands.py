"""The product's commands: thin handlers over the same code Dagster runs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import TYPE_CHECKING

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.errors import OperatorError
from acpipeline.report import print_status, table

if TYPE_CHECKING:  # loaded on use: `acpipeline --help` and the one-line errors stay fast
    from dagster import Definitions

ONLY_FLAGS = {
    "paintings_only": "painting",
    "moods_only": "mood",
    "pieces_only": "piece",
    "kidlisp_only": "kidlisp",
    "tapes_only": "tape",
    "news_only": "news",
}

NO_ACCOUNTS = (
    "no user in MongoDB has an ATProto account (atproto.did, .handle and .password): "
    "check MONGODB_CONNECTION_STRING and MONGODB_NAME"
)


def _media(args: argparse.Namespace) -> list[str] | None:
    chosen = [media for flag, media in ONLY_FLAGS.items() if getattr(args, flag, False)]
    if getattr(args, "media", None):
        for name in args.media.split(","):
            if name.strip() not in MEDIA_NAMES:
                raise OperatorError(f"unknown media {name!r}: choose from {', '.join(MEDIA_NAMES)}")
            chosen.append(name.strip())
    return sorted(set(chosen), key=MEDIA_NAMES.index) or None


def _load_defs() -> Definitions:
    from acpipeline.definitions import build_definitions

    return build_definitions()


def cmd_pds(args: argparse.Namespace) -> int:
    """Serve the local PDS until SIGINT or SIGTERM, then stop it; `--install-only` installs it and returns."""
    from acpipeline.localpds import server

    if args.install_only:
        server.install()
        print("the local PDS is installed")
        return 0
    pds = server.start(port=args.port)
    print(f"PDS ready at {pds.url}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        pds.stop()
    return 0


def run_sync(args: argparse.Namespace) -> int:
    """The sync command; exit 1 when a partition failed or its check did (a dry run's pending writes and a
    deferred partition are no failure)."""
    from acpipeline.report import SyncProgress, print_sync
    from acpipeline.sync.runner import run_partitions

    started = time.monotonic()
    progress = SyncProgress() if not (args.json or args.quiet) else None
    try:
        results, without = run_partitions(
            _load_defs(),
            None,
            args.handle,
            _media(args),
            dry_run=args.dry_run,
            strict=args.strict,
            full=args.full,
            progress=progress,
        )
    finally:
        if progress:
            progress.close()
    if not results:
        raise OperatorError(NO_ACCOUNTS)
    if args.json:
        rows = [r.row() for r in results]
        print(json.dumps({"partitions": rows, "users_without_account": without}, indent=2, default=str))
    else:
        print_sync(results, without, time.monotonic() - started, quiet=args.quiet)
    # In a dry run the check fails while writes are pending: that is the plan, not an error; nor is a
    # partition the PDS's rate limit deferred (the totals line says until when).
    ok = all(r.ok and (args.dry_run or r.deferred or r.check_passed is not False) for r in results)
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Records MongoDB wants against records the PDS holds, per account and media type; reads only, writes
    nothing."""
    from acpipeline.operations.status import partition_status

    rows = partition_status(_load_defs(), args.handle)
    if not rows:
        raise OperatorError(NO_ACCOUNTS)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_status(rows)
    return 0


def cmd_lexicons(args: argparse.Namespace) -> int:
    """`publish` writes the new and changed schemas; `check` only compares (exit 1 on any difference)."""
    from acpipeline.operations.lexicons import run_lexicons

    publish = args.action == "publish"
    report = run_lexicons(_load_defs(), args.handle, publish=publish)
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if publish or report.plan.identical else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Checks the configuration end to end, one line per check; exit 1 when any check failed."""
    from acpipeline.operations.doctor import run_doctor, summary

    if args.sample < 1:
        raise OperatorError(f"--sample {args.sample}: sample at least 1 account")
    results = run_doctor(_load_defs(), sample=args.sample)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print("\n".join([*(r.line() for r in results), summary(results)]))
    return 0 if all(r.ok for r in results) else 1


def cmd_wipe(args: argparse.Namespace) -> int:
    """Without --yes (or with --dry-run) only counts what would go; with --yes deletes it."""
    from acpipeline.instance import get_instance
    from acpipeline.operations.wipe import run_wipe

    dry_run = args.dry_run or not args.yes
    outcome = run_wipe(
        _load_defs(), get_instance(), args.handle, _media(args), dry_run=dry_run, confirm=args.yes
    )
    if args.json:
        print(json.dumps({"ok": outcome.ok, "error": outcome.error, **outcome.value}, indent=2, default=str))
        return 0 if outcome.ok else 1
    if not outcome.ok:
        print(f"wipe of {args.handle} failed: {outcome.error} (run {outcome.run_id})", file=sys.stderr)
        return 1
    rows = outcome.value["collections"]
    if dry_run:
        for row in rows:
            row["would_delete"], row["links_to_clear"] = row["on_pds"], row["linked"]
        print(table(rows, ["nsid", "would_delete", "links_to_clear"]))
        print(
            f"dry run: nothing deleted; {outcome.value['records_on_pds']} records of {args.handle} would be "
            + ("deleted (without --dry-run)." if args.yes else "deleted: add --yes to delete them.")
        )
    else:
        print(table(rows, ["nsid", "on_pds", "deleted", "commits", "links_cleared"]))
        print(
            f"wiped {args.handle}: {outcome.value['records_deleted']} records deleted, "
            f"{outcome.value['links_cleared']} MongoDB links cleared. "
            f"Restore with: acpipeline sync --handle {args.handle}"
        )
    return 0
