"""Scale probe: the sensor tick and a full backfill at the platform's size, in a throwaway instance and store.

    python -m acpipeline.bench.scale_probe [--handles 4201] [--documents 100000] [--no-graphql]
                                               [--backfill-iteration N]

Creates a temporary ACPIPELINE_HOME (embedded store) and DAGSTER_HOME, fills the store with `--handles`
users with accounts and `--documents` documents spread over the five collections (as if synced: each one
linked), registers the handles as partitions, then times:

- sensor ticks over the whole source: the first (baseline), one with nothing changed, one after an insert;
  and the size of the cursor Dagster stores with every tick;
- the reconcile schedule's evaluation (run requests over ranges of whole accounts);
- through Dagster's GraphQL API in process: a partition backfill of every partition
  (`launchPartitionBackfill`, the UI's "Materialize all"), and the partition-status query the asset page
  makes.

Nothing leaves this machine: no PDS or storage is contacted (the sensor finds no tape to check).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext

    from acpipeline.resources.mongo import MongoDatabase

PROJECT = Path(__file__).resolve().parents[2]
SYNC_ASSETS = ("source_items", "media_blobs", "atproto_records")
COLLECTIONS = {"paintings": 0.3, "moods": 0.3, "pieces": 0.05, "kidlisp": 0.3, "tapes": 0.05}


@contextmanager
def timed(label: str, figures: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    figures[label] = time.perf_counter() - started
    print(f"  {label}: {figures[label]:.2f} s", flush=True)


def fill(db: MongoDatabase, handles: int, documents: int, seed: int = 5) -> list[str]:
    from bson import ObjectId

    rng = random.Random(seed)
    subs = [f"auth0|probe{i:05d}" for i in range(handles)]
    db["users"].insert_many(
        [
            {
                "_id": sub,
                "code": f"p{i}",
                "atproto": {
                    "did": f"did:plc:probe{i:05d}",
                    "handle": f"probe{i:05d}.at.aesthetic.computer",
                    "password": "not-a-real-password",
                },
            }
            for i, sub in enumerate(subs)
        ]
    )
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for collection, share in COLLECTIONS.items():
        docs = []
        for i in range(int(documents * share)):
            doc = {
                "_id": ObjectId(),
                # half from a few heavy users, half spread over everyone (every account has content)
                "user": subs[min(int(rng.paretovariate(1.2)) - 1, handles - 1)]
                if i % 2
                else rng.choice(subs),
                "when": t0 + timedelta(seconds=i),
                "atproto": {"rkey": f"probe{i}", "uri": "at://probe", "cid": "probe"},
            }
            if collection == "moods":
                doc["mood"] = "feeling " * rng.randint(1, 30)
            elif collection == "kidlisp":
                doc.update(code=f"k{i}", source="(wipe blue)\n(ink red)\n" * rng.randint(1, 40), hits=3)
            else:
                doc.update(code=f"c{i}", slug=f"2024.1.1.{i}", bucket="user-aesthetic-computer")
            docs.append(doc)
        db[collection].insert_many(docs)
    return subs


def graphql_probe(figures: dict[str, float], keys: list[str], iterate: int) -> None:
    from dagster import DagsterInstance
    from dagster_graphql.test.utils import execute_dagster_graphql

    from acpipeline.dagster_compat import workspace_context

    instance = DagsterInstance.get()
    with timed("graphql: load the code location", figures):
        process = workspace_context(instance, str(PROJECT / "workspace.yaml"))
    with process:
        context = process.create_request_context()
        status_query = """
            query { assetNodeOrError(assetKey: {path: ["atproto_records"]}) {
              ... on AssetNode { partitionKeysByDimension { name partitionKeys }
                assetPartitionStatuses { __typename } } } }"""
        with timed("graphql: asset page partition query (21k partitions)", figures):
            result = execute_dagster_graphql(context, status_query)
        assert not result.errors, result.errors
        dims = result.data["assetNodeOrError"]["partitionKeysByDimension"]
        print(f"  dimensions: {[(d['name'], len(d['partitionKeys'])) for d in dims]}", flush=True)
        mutation = """
            mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
              __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
        params = {
            "assetSelection": [{"path": [name]} for name in SYNC_ASSETS],
            "partitionNames": keys,
        }
        with timed(f"graphql: launchPartitionBackfill of {len(keys)} partitions", figures):
            result = execute_dagster_graphql(context, mutation, {"params": params})
        launched = result.data["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None, backfill_id
        print(f"  backfill {backfill_id}: {backfill.status.value}", flush=True)
        if iterate:
            # The daemon turns every partition of a backfill into a queued run in one pass; time that on a
            # slice (the whole backfill would take hours here) and cancel the big one first.
            cancel = "mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"
            execute_dagster_graphql(context, cancel, {"id": backfill_id})
            params["partitionNames"] = keys[:iterate]
            result = execute_dagster_graphql(context, mutation, {"params": params})
            small = result.data["launchPartitionBackfill"]["backfillId"]
            backfill_iteration(process, instance, small, figures)


def backfill_iteration(
    process: WorkspaceProcessContext, instance: DagsterInstance, backfill_id: str, figures: dict[str, float]
) -> None:
    """One pass of the backfill daemon (the run queue is not served here, so nothing executes)."""
    import logging

    from dagster import RunsFilter

    from acpipeline.dagster_compat import backfill_iteration

    with timed("backfill daemon: one pass over the slice", figures):
        backfill_iteration(process, logging.getLogger("probe"))
    runs = instance.get_runs_count(RunsFilter(tags={"dagster/backfill": backfill_id}))
    rate = runs / figures["backfill daemon: one pass over the slice"]
    print(f"    {runs} runs queued: {rate:.1f} runs/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handles", type=int, default=4201)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--no-graphql", action="store_true", help="skip the GraphQL backfill launch")
    parser.add_argument(
        "--backfill-iteration",
        type=int,
        default=0,
        metavar="N",
        help="also time the backfill daemon's pass over a backfill of N partitions (one queued run each)",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="acpipeline-probe-"))
    os.environ.update(
        ACPIPELINE_HOME=str(work / "home"),
        DAGSTER_HOME=str(work / "dagster_home"),
        ACPIPELINE_AUTOMATION="stopped",
        ACPIPELINE_ZIP_URL="http://127.0.0.1:9/{bucket}/{user_dir}{slug}.zip",
    )
    os.environ.pop("MONGODB_CONNECTION_STRING", None)
    (work / "dagster_home").mkdir(parents=True)
    shutil.copy(PROJECT / "dagster.yaml", work / "dagster_home" / "dagster.yaml")
    figures: dict[str, float] = {}
    try:
        from dagster import DagsterInstance, build_schedule_context

        from acpipeline.core.media import MEDIA_NAMES
        from acpipeline.definitions import build_definitions
        from acpipeline.operations.schedule import reconcile_schedule
        from acpipeline.operations.sensor import evaluate
        from acpipeline.operations.sensor_state import encode_state, load_state, save_state
        from acpipeline.resources.mongo import MongoResource
        from acpipeline.resources.storage import StorageResource
        from acpipeline.sync.partitions import partition_key, register_handles

        db = MongoResource().db()
        instance = DagsterInstance.get()
        storage = StorageResource(zip_url=os.environ["ACPIPELINE_ZIP_URL"])
        print(f"probe in {work}: {args.handles} handles, {args.documents} documents", flush=True)
        with timed("fill the embedded store", figures):
            subs = fill(db, args.handles, args.documents)
        with timed(f"register {args.handles} handles as partitions", figures):
            handles = register_handles(instance, db)
        with timed("sensor tick 1 (baseline)", figures):
            first = evaluate(db, instance, storage, None)
        print(f"    {first.summary()}", flush=True)
        with timed("sensor tick 2 (nothing changed)", figures):
            second = evaluate(db, instance, storage, first.state)
        assert not second.requests, second.requests
        db["moods"].insert_one({"user": subs[7], "mood": "new", "when": datetime.now(UTC)})
        with timed("sensor tick 3 (one insert)", figures):
            third = evaluate(db, instance, storage, second.state)
        print(f"    requests: {third.requests}", flush=True)
        with timed("sensor state: save and load", figures):
            cursor = save_state(instance, third.state, None)
            assert load_state(instance, cursor) == third.state
        print(
            f"    cursor {cursor!r}; state {len(encode_state(third.state))} characters in Dagster's "
            f"key-value store, for {len(third.state.digests)} accounts with content",
            flush=True,
        )

        defs = build_definitions()
        with (
            timed(f"schedule evaluation ({len(handles) * len(MEDIA_NAMES)} partitions)", figures),
            build_schedule_context(
                instance=instance,
                resources=defs.resources,
                repository_def=defs.get_repository_def(),
                scheduled_execution_time=datetime.now(UTC),
            ) as context,
        ):
            requests = reconcile_schedule.evaluate_tick(context).run_requests or []  # None: it skipped
        print(f"    {len(requests)} run requests", flush=True)
        if not args.no_graphql:
            keys = [partition_key(h, m) for h in handles for m in MEDIA_NAMES]
            graphql_probe(figures, keys, args.backfill_iteration)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
