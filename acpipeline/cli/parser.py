"""The command line's arguments: one function per command.

The product's commands are here. The tools beside it (the demo, the benchmarks) add theirs through the
entry point group `acpipeline.commands` (pyproject.toml), so the command line imports none of them.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, distribution
from typing import TYPE_CHECKING

from acpipeline.cli import commands
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.settings import ART_HANDLE

if TYPE_CHECKING:
    from collections.abc import Callable

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

TOOL_COMMANDS = "acpipeline.commands"  # entry point group: each entry adds its subcommand to the parser


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: the product's commands, then the tools registered as entry points."""
    parser = argparse.ArgumentParser(
        prog="acpipeline", description="Mirror Aesthetic Computer's media (MongoDB) into ATProto records."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_pds, _sync, _wipe, _status, _doctor, _lexicons):
        add(sub)
    for add_tool in _tool_commands():
        add_tool(sub)
    return parser


def _tool_commands() -> list[Callable[[Subparsers], None]]:
    """The commands our own distribution registers (7 ms less than every installed one's, on each run)."""
    try:
        registered = distribution("acpipeline").entry_points.select(group=TOOL_COMMANDS)
    except PackageNotFoundError:  # the source without `pip install`: the product's commands only
        return []
    return [entry.load() for entry in sorted(registered, key=lambda entry: entry.name)]


def _pds(sub: Subparsers) -> None:
    pds = sub.add_parser("pds", help="run Bluesky's reference PDS locally (installs it on first use)")
    pds.add_argument("--port", type=int, default=None)
    pds.add_argument("--install-only", action="store_true", help="install Node 22 and the PDS, then exit")
    pds.set_defaults(func=commands.cmd_pds)


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
