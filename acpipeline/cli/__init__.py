"""`acpipeline`: a thin command line over the same code Dagster runs."""

from __future__ import annotations

import logging
import os
import sys

from acpipeline.cli.parser import build_parser
from acpipeline.errors import OperatorError
from acpipeline.settings import apply_dagster_env
from acpipeline.settings_file import apply_settings_file, settings_path


def main(argv: list[str] | None = None) -> int:
    """Run one command line and return its exit status; every error ends as one line on stderr (the traceback
    only with ACPIPELINE_DEBUG)."""
    args = build_parser().parse_args(argv)
    apply_dagster_env()  # for the runs this command creates and the servers `demo --serve` starts
    applied: dict[str, str] = {}
    if getattr(args, "settings_file", True):  # the demo and the benchmarks make their own
        settings, applied = apply_settings_file()
        if settings.conflicts:
            print(f"acpipeline: {settings.warning()}", file=sys.stderr)
    try:
        status: int = args.func(args)
        return status
    except OperatorError as exc:
        # A setting the message names that came from the settings file: say where it is set.
        named = [name for name in applied if name in str(exc)]
        where = f" ({', '.join(named)}: set in {settings_path()})" if named else ""
        print(f"acpipeline: {exc}{where}", file=sys.stderr)
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
