"""`acpipeline demo`: the demo world's command, registered with the command line through an entry point.

Importing this module loads neither the dataset builder nor the world: the command imports them on use.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from acpipeline.cli.commands import ONLY_FLAGS, run_sync
from acpipeline.demo import SIZES

if TYPE_CHECKING:
    from acpipeline.cli.parser import Subparsers
    from acpipeline.demo.world import SavedWorld


def add_command(sub: Subparsers) -> None:
    """Register `acpipeline demo` (the entry point `demo` of the group `acpipeline.commands`)."""
    demo = sub.add_parser(
        "demo",
        help="a fresh demo world (local PDS, media server, synthetic data in the embedded store), then a "
        "full sync; its services keep running in the background for every other command",
    )
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
    demo.set_defaults(func=cmd_demo, settings_file=False)  # it makes its own


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
    print(f"its settings are in {demo_world.write_settings(world)}", flush=True)
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
