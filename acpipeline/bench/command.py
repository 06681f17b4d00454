"""`acpipeline bench`: the benchmarks' command, registered with the command line through an entry point.

Importing this module loads no benchmark: the command imports the one it runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from acpipeline.errors import OperatorError

if TYPE_CHECKING:
    from acpipeline.cli.parser import Subparsers


def add_command(sub: Subparsers) -> None:
    """Register `acpipeline bench` (the entry point `bench` of the group `acpipeline.commands`)."""
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
    bench.set_defaults(func=cmd_bench, settings_file=False)  # it makes its own


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
