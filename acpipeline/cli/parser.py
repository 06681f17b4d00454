"""The command line's arguments: one function per command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from acpipeline.cli import commands, tools
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.settings import ART_HANDLE

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acpipeline", description="Mirror Aesthetic Computer's media (MongoDB) into ATProto records."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_pds, _demo, _sync, _wipe, _bench, _status, _doctor, _lexicons):
        add(sub)
    return parser


def _pds(sub: Subparsers) -> None:
    pds = sub.add_parser("pds", help="run Bluesky's reference PDS locally (installs it on first use)")
    pds.add_argument("--port", type=int, default=None)
    pds.add_argument("--install-only", action="store_true", help="install Node 22 and the PDS, then exit")
    pds.set_defaults(func=commands.cmd_pds)


def _demo(sub: Subparsers) -> None:
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
    demo.set_defaults(func=tools.cmd_demo, settings_file=False)  # it makes its own


def _sync(sub: Subparsers) -> None:
    sync = sub.add_parser("sync", help="materialize sync partitions through Dagster (default: all)")
    sync.add_argument("--handle", action="append", help="a PDS handle (repeatable)")
    sync.add_argument("--media", help="comma-separated: " + ",".join(MEDIA_NAMES))
    for flag, media in commands.ONLY_FLAGS.items():
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
    sync.set_defaults(func=commands.run_sync)


def _wipe(sub: Subparsers) -> None:
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
    wipe.set_defaults(func=commands.cmd_wipe)


def _bench(sub: Subparsers) -> None:
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
    bench.set_defaults(func=tools.cmd_bench, settings_file=False)  # it makes its own


def _status(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="per partition: desired items vs records on the PDS")
    status.add_argument("--handle", action="append")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=commands.cmd_status)


def _doctor(sub: Subparsers) -> None:
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
    doctor.set_defaults(func=commands.cmd_doctor)


def _lexicons(sub: Subparsers) -> None:
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
        action.set_defaults(func=commands.cmd_lexicons)
