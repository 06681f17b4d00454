"""`acpipeline`: a thin command line over the same code Dagster runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from acpipeline.core.media import MEDIA_NAMES
from acpipeline.errors import OperatorError
from acpipeline.report import print_status, table
from acpipeline.settings import ART_HANDLE, apply_dagster_env

if TYPE_CHECKING:  # loaded on use: `acpipeline --help` and the one-line errors stay fast
    from dagster import Definitions

    from acpipeline.demo.world import SavedWorld

ONLY_FLAGS = {
    "paintings_only": "painting",
    "moods_only": "mood",
    "pieces_only": "piece",
    "kidlisp_only": "kidlisp",
    "tapes_only": "tape",
    "news_only": "news",
}

# The commands that work on the demo's world when it is this checkout's configuration (acpipeline.demo.world).
DEMO_WORLD_COMMANDS = {"sync", "status", "wipe", "doctor", "lexicons"}

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


def cmd_bench(args: argparse.Namespace) -> int:
    if args.platform:
        from acpipeline.bench.platform import run_platform_bench

        run_platform_bench(
            args.json,
            size=args.size if args.size != "bench" else "platform",
            rtt_ms=args.rtt,
            bandwidth_mbit=args.bandwidth,
            layout=args.layout or "production",
            pds_limits=args.pds_limits or "off",
            launcher=args.launcher or "default",
        )
        return 0
    if args.layout or args.pds_limits or args.launcher:
        raise OperatorError("--layout, --launcher and --pds-limits go with --platform")
    from acpipeline.bench.run import run_bench

    run_bench(
        args.json, size=args.size, rtt_ms=args.rtt, bandwidth_mbit=args.bandwidth, trace_path=args.trace
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
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


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: a fresh world in the background, seeded and synced. `demo up|status|down` manage it."""
    from acpipeline.demo import world as demo_world

    saved = demo_world.load_saved_world()
    running = saved is not None and demo_world.is_running(saved)
    if args.action == "status":
        running, lines = demo_world.status_lines(saved)
        print("\n".join(lines))
        return 0 if running else 1
    if args.action == "down":
        if saved is None or not running:
            print("the demo world is not running")
            return 0
        demo_world.stop(saved)
        print(
            "stopped the demo's PDS and media server; the demo data stays in "
            f"{saved.media_root.rsplit('/', 1)[0]} ('acpipeline demo up' brings the world back)"
        )
        return 0
    if args.action == "up" and saved is not None and running:
        print("\n".join(demo_world.status_lines(saved)[1]))
        return 0
    if saved is not None and running:
        print(f"stopping the demo world started {saved.started}, to start afresh", flush=True)
        demo_world.stop(saved)
    size = args.size or (str(saved.dataset.get("size")) if saved and args.action == "up" else None) or "small"
    world = _bring_up_demo(size)
    if args.action == "up" or args.seed_only:
        print("Next: 'acpipeline sync' mirrors it; 'acpipeline status' compares.")
        return 0
    args.handle, args.media, args.dry_run, args.strict, args.full = None, None, False, False, False
    args.quiet = False
    for flag in ONLY_FLAGS:
        setattr(args, flag, False)
    status = run_sync(args)
    print(
        f"The demo's PDS and media server keep running in the background (started {world.started}): "
        "'acpipeline demo status' shows them, 'acpipeline demo down' stops them."
    )
    if args.serve:
        print("starting the Dagster UI at http://127.0.0.1:3000 (Ctrl-C stops it)", flush=True)
        return _dagster_dev()
    return status


def _bring_up_demo(size: str) -> SavedWorld:
    """Start the world's services in the background and seed the demo data into them."""
    from pathlib import Path

    from acpipeline.demo import world as demo_world
    from acpipeline.demo.environment import refuse_a_real_database, seed
    from acpipeline.instance import ensure_dagster_home
    from acpipeline.resources.mongo import MongoResource

    refuse_a_real_database()
    ensure_dagster_home()
    world = demo_world.start_background()
    for name, value in world.environment().items():
        os.environ[name] = value  # this process's sync, and the servers it starts
    print(f"PDS ready at {world.pds_url}", flush=True)
    print(f"media server at {world.media_url}", flush=True)
    mongo = MongoResource()
    try:
        summary = seed(world.pds_url, Path(world.media_root), mongo.db(), size=size)
    except BaseException:
        demo_world.stop(world)
        raise
    finally:
        mongo.close()
    world.dataset = {"size": size, "counts": summary.counts}
    world.save()
    print(
        f"seeded the embedded store ({mongo.describe()}) in {summary.elapsed_seconds:.1f} s: "
        + ", ".join(f"{n} {c}" for c, n in summary.counts.items()),
        flush=True,
    )
    return world


def _dagster_dev() -> int:
    return subprocess.call(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3000"],
        env=os.environ.copy(),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acpipeline", description="Mirror Aesthetic Computer's media (MongoDB) into ATProto records."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    pds = sub.add_parser("pds", help="run Bluesky's reference PDS locally (installs it on first use)")
    pds.add_argument("--port", type=int, default=None)
    pds.add_argument("--install-only", action="store_true", help="install Node 22 and the PDS, then exit")
    pds.set_defaults(func=cmd_pds)

    demo = sub.add_parser(
        "demo",
        help="a fresh demo world (local PDS, media server, synthetic data in the embedded store), then a "
        "full sync; its services keep running in the background for every other command",
    )
    from acpipeline.demo import SIZES  # the package alone: the dataset builder is imported on use

    demo.add_argument(
        "action",
        nargs="?",
        choices=["up", "status", "down"],
        help="up: bring the world back if it stopped (seeded again, not synced); status: what runs where; "
        "down: stop its services (the data stays)",
    )
    demo.add_argument("--size", choices=SIZES, default=None, help="the dataset (default small)")
    demo.add_argument("--seed-only", action="store_true", help="stop after seeding")
    demo.add_argument("--serve", action="store_true", help="afterwards open the Dagster UI (dagster dev)")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)

    sync = sub.add_parser("sync", help="materialize sync partitions through Dagster (default: all)")
    sync.add_argument("--handle", action="append", help="a PDS handle (repeatable)")
    sync.add_argument("--media", help="comma-separated: " + ",".join(MEDIA_NAMES))
    for flag, media in ONLY_FLAGS.items():
        sync.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=f"only {media}")
    sync.add_argument("--dry-run", action="store_true", help="report the plan, write nothing")
    sync.add_argument("--strict", action="store_true", help="fail a partition when any item failed")
    sync.add_argument(
        "--full",
        action="store_true",
        help="run every partition, also those proven converged since the last sync",
    )
    sync.add_argument("--json", action="store_true")
    sync.add_argument("--quiet", action="store_true", help="print only the totals line and what failed")
    sync.set_defaults(func=run_sync)

    wipe = sub.add_parser(
        "wipe",
        help="delete one account's computer.aesthetic.* records and clear their MongoDB links "
        "(without --yes: only show what would be deleted)",
    )
    wipe.add_argument("--handle", required=True, help="the account's PDS handle")
    wipe.add_argument("--media", help="comma-separated (default all): " + ",".join(MEDIA_NAMES))
    wipe.add_argument("--dry-run", action="store_true", help="only count, even with --yes")
    wipe.add_argument("--yes", action="store_true", help="really delete")
    wipe.add_argument("--json", action="store_true")
    wipe.set_defaults(func=cmd_wipe)

    bench = sub.add_parser("bench", help="the benchmark on a fresh local PDS (about 5 minutes)")
    bench.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    bench.add_argument(
        "--platform",
        action="store_true",
        help="the platform-size benchmark instead: every partition of the platform dataset through the "
        "Dagster code server, webserver and daemon, as UI backfills (about 11 minutes)",
    )
    bench.add_argument(
        "--rtt",
        type=float,
        metavar="MS",
        help="put a network of this round trip in front of the PDS and the media storage, for every figure "
        "(with --platform: for the passes)",
    )
    bench.add_argument("--bandwidth", type=float, metavar="MBIT", help="that network's Mbit/s each way")
    bench.add_argument(
        "--layout",
        choices=["production", "dev"],
        help="with --platform: the Dagster processes, as the production layout runs them (a code server, "
        "dagster-webserver, dagster-daemon; the default) or as `make dev` does (`dagster dev`)",
    )
    bench.add_argument(
        "--launcher",
        choices=["default", "celery"],
        help="with --platform: each run a new process of the code server (the default), or runs in a warm "
        "Celery worker over Redis (deploy/celery/)",
    )
    bench.add_argument(
        "--pds-limits",
        choices=["off", "bypass", "on"],
        help="with --platform: the local PDS's own rate limits off (the default), on with the bypass key "
        "given to the pipeline, or on",
    )
    bench.add_argument("--size", choices=["bench", "small"], default="bench", help=argparse.SUPPRESS)
    bench.add_argument("--trace", metavar="PATH", help=argparse.SUPPRESS)  # every request, with --rtt
    bench.set_defaults(func=cmd_bench)

    status = sub.add_parser("status", help="per partition: desired items vs records on the PDS")
    status.add_argument("--handle", action="append")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser(
        "doctor",
        help="check the configuration end to end (MongoDB, the PDS, accounts, storage, ffmpeg, Dagster); "
        "exit status 1 when a check fails",
    )
    doctor.add_argument(
        "--sample", type=int, default=3, help="accounts to open a session for (the art account among them)"
    )
    doctor.add_argument(
        "--json", action="store_true", help="print the results as a list of {check, ok, detail}"
    )
    doctor.set_defaults(func=cmd_doctor)

    lexicons = sub.add_parser(
        "lexicons", help="publish our lexicons as com.atproto.lexicon.schema records, or compare with them"
    )
    actions = lexicons.add_subparsers(dest="action", required=True)
    publish = actions.add_parser(
        "publish", help="write our new and changed lexicons to the account's repository (never deletes)"
    )
    publish.add_argument("--handle", required=True, help="the account whose repository publishes them")
    check = actions.add_parser(
        "check", help="compare the published lexicons with ours; exit status 1 on any difference"
    )
    check.add_argument(
        "--handle", default=ART_HANDLE, help=f"the publishing account (default: the art account {ART_HANDLE})"
    )
    for action in (publish, check):
        action.add_argument("--json", action="store_true", help="print the plan as JSON")
        action.set_defaults(func=cmd_lexicons)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_dagster_env()  # for the runs this command creates and the servers `demo --serve` starts
    try:
        if args.command in DEMO_WORLD_COMMANDS:
            from acpipeline.demo.world import apply_saved_world

            apply_saved_world(require_running=True)
        status: int = args.func(args)
        return status
    except OperatorError as exc:
        print(f"acpipeline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback: what failed is in the message
        if os.environ.get("ACPIPELINE_DEBUG"):
            raise
        print(f"acpipeline: {_plain_error(exc)} (ACPIPELINE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _plain_error(exc: Exception) -> str:
    """The error as an operator reads it: PDS, network and MongoDB errors by their own message."""
    from pymongo.errors import PyMongoError

    from acpipeline.resources.pds import PdsError

    if isinstance(exc, PdsError):
        return f"the PDS refused: {exc}"
    if isinstance(exc, PyMongoError):
        return f"MongoDB failed: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def run() -> None:
    """The command's entry point: `main`, then exit without tearing the interpreter down. Every file,
    connection and child process is closed by then; freeing Dagster's objects one by one would add half a
    second to every sync."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
