"""README claims that had no test of their own (issue 27), one group per claim, each headed by the README
section that makes it. Against the real reference PDS where the claim needs one (a `FaultProxy` in front of
it where the claim is about the PDS's answers), with a tiny dataset per test."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bson import ObjectId
from dagster import AssetRecordsFilter, DagsterRunStatus, RunsFilter

from acpipeline.bench.backfill_pass import BACKFILL_STATUS, LAUNCH
from acpipeline.cli import main
from acpipeline.core.media import MEDIA, MEDIA_NAMES
from acpipeline.instance import ensure_dagster_home, get_instance, open_instance
from acpipeline.operations.schedule import reconcile_schedule
from acpipeline.sync.assets import atproto_records
from acpipeline.sync.partitions import (
    FULL_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    partition_key,
    range_members,
    register_handles,
)

from .faultproxy import FaultProxy
from .helpers import T0, add_moods, add_user, row_values, sync
from .oracle import listed_over_http
from .test_batched import by_partition, run_range
from .test_cli import cli
from .test_news import post as news_post
from .test_operations import SensorDriver, _schedule_tick
from .test_reliability import add_paintings, proxy_for  # noqa: F401 (a fixture)

PROJECT = Path(__file__).resolve().parents[1]
APPLY = "com.atproto.repo.applyWrites"
UPLOAD = "com.atproto.repo.uploadBlob"
LIST_REPOS = "com.atproto.sync.listRepos"
LATEST = "com.atproto.sync.getLatestCommit"
DEFERRED_TAG = "acpipeline/deferred"  # the README's name for it, spelled out (not imported)
AC = "https://aesthetic.computer"


def forget_sessions(world) -> None:
    """No saved session may spare a wrong password its login."""
    world.client._sessions.clear()
    for path in (world.home / "sessions").glob("*"):
        path.unlink()


def refuse_writes_of(proxy: FaultProxy, did: str | None = None) -> None:
    """The proxy answers the account's applyWrites (every account's: None) with the PDS's 429, whose
    `retry-after` (the proxy's) outlasts the retry budget."""

    def hook(seen):
        if seen.nsid == APPLY and seen.phase == "before" and (did is None or seen.json()["repo"] == did):
            return "429"
        return None

    proxy.hooks.append(hook)


def fake_users(db, names: list[str]) -> list[str]:
    """MongoDB users with ATProto credentials and no PDS behind them (the sensor never asks the PDS)."""
    db["users"].insert_many(
        [
            {"_id": f"auth0|{name}", "atproto": {"did": f"did:plc:{name}", "handle": name, "password": "pw"}}
            for name in names
        ]
    )
    return names


# -- "In Dagster" > "A failing partition fails alone": ... the backfill ends `COMPLETED_FAILED` ------------


def test_a_backfill_with_one_failing_partition_ends_completed_failed(world, tmp_path):
    """A UI backfill (GraphQL `launchPartitionBackfill`, as the UI's "Materialize…" sends it) of three
    partitions, driven by Dagster's own backfill daemon iteration over the code location; one account's
    login is refused."""
    from dagster._core.instance_for_test import instance_for_test
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster_graphql.test.utils import execute_dagster_graphql

    db = world.db()
    users = [add_user(world, db, f"backfill{n}") for n in (1, 2, 3)]
    for n, (sub, _, _) in enumerate(users, start=1):
        add_moods(db, sub, [f"mood {i} of {n}" for i in range(n)])
    db["users"].update_one({"_id": users[1][0]}, {"$set": {"atproto.password": "not-the-password"}})
    forget_sessions(world)
    keys = [partition_key(handle, "mood") for _, handle, _ in users]
    # The code location as a code server loads it: definitions built from the environment of now.
    location = tmp_path / "location.py"
    location.write_text(
        "from acpipeline.definitions import build_definitions\n\ndefs = build_definitions()\n"
    )
    home = tmp_path / "backfill_home"
    home.mkdir()
    event_log = {"module": "acpipeline.event_log", "class": "PooledSqliteEventLogStorage"}  # dagster.yaml's
    with instance_for_test(
        overrides={"event_log_storage": event_log},
        synchronous_run_launcher=True,
        synchronous_run_coordinator=True,
        temp_dir=str(home),
    ) as instance:
        instance.add_dynamic_partitions("handle", [handle for _, handle, _ in users])
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(python_file=str(location), working_directory=str(PROJECT))
        )
        with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
            params = {
                "assetSelection": [{"path": [n]} for n in ("source_items", "media_blobs", "atproto_records")],
                "partitionNames": keys,
                "title": "one bad account",
            }
            launched = execute_dagster_graphql(workspace.create_request_context(), LAUNCH, {"params": params})
            assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched.data["launchPartitionBackfill"]["backfillId"]
            status = "REQUESTED"
            for _ in range(10):  # the daemon's iterations: launch the run (it runs at once), then settle
                list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))
                answer = execute_dagster_graphql(
                    workspace.create_request_context(), BACKFILL_STATUS, {"id": backfill_id}
                )
                status = answer.data["partitionBackfillOrError"]["status"]
                if status != "REQUESTED":
                    break
        assert status == "COMPLETED_FAILED"
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert [r.status for r in runs] == [DagsterRunStatus.FAILURE]  # one run for the three partitions
        data = instance.get_backfill(backfill_id).asset_backfill_data
        failed = data.failed_and_downstream_subset.partitions_subsets_by_asset_key
        done = data.materialized_subset.partitions_subsets_by_asset_key
        records_key = next(k for k in done if k.to_user_string() == "atproto_records")
        assert set(failed[records_key].get_partition_keys()) == {keys[1]}
        assert set(done[records_key].get_partition_keys()) == {keys[0], keys[2]}


# -- "In Dagster" > "Concurrency": `dagster.yaml` caps ... the run queue at 4 runs --------------------------


def test_the_run_queue_of_the_project_instance_starts_four_runs_at_once(tmp_path, monkeypatch):
    """The instance as the CLI and `make dev` make it (the project's dagster.yaml copied into DAGSTER_HOME),
    and Dagster's own queue daemon deciding what to dequeue."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    home = ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == (PROJECT / "dagster.yaml").read_text()
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("acpipeline"), "__repository__"), "sync_partition"
    )

    def run(status: DagsterRunStatus):
        return create_run_for_test(
            instance, job_name="sync_partition", status=status, remote_job_origin=origin
        )

    with open_instance(home) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)

        def dequeued() -> int:
            config = instance.get_concurrency_config()
            return len(daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None))

        for _ in range(6):
            run(DagsterRunStatus.QUEUED)
        assert dequeued() == 4  # six waiting, nothing running: four go
        going = [run(DagsterRunStatus.STARTED) for _ in range(4)]
        assert dequeued() == 0  # four running: the others wait
        instance.report_run_canceled(going[0])
        assert dequeued() == 1


# -- "In Dagster", last bullet: no pickled copies of users' content under `DAGSTER_HOME` ---------------------


def every_byte_under(home: Path) -> bytes:
    """Every file under `home` as bytes, SQLite databases row by row with compressed values decompressed."""
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found.append(data)
        if data.startswith(b"SQLite format 3"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                for table in tables:
                    found.append(row_values(conn.execute(f'SELECT * FROM "{table}"')))
    return b"\n".join(found)


def test_a_cli_sync_leaves_no_copy_of_users_content_under_dagster_home(world, capfd, monkeypatch):
    monkeypatch.setenv("ACPIPELINE_SYNC_WORKERS", "1")
    db = world.db()
    sub, handle, did = add_user(world, db, "private")
    secret = f"my own words {ObjectId()}"
    add_moods(db, sub, [secret, "and another"])
    assert main(["sync", "--handle", handle, "--moods-only"]) == 0, capfd.readouterr()
    assert [r["value"]["mood"] for r in listed_over_http(world.pds_url, did, MEDIA["mood"].nsid)].count(
        secret
    ) == 1
    home = ensure_dagster_home()
    with open_instance(home) as instance:
        assert [r.status for r in instance.get_runs()] == [DagsterRunStatus.SUCCESS]  # the run is recorded
    everything = every_byte_under(home)
    assert len(everything) > 10_000
    for text in (secret, "and another"):
        assert text.encode() not in everything, f"{text!r} is stored under DAGSTER_HOME"
    # No step output stored at all: under `storage`, only Dagster's captured compute logs; no pickle anywhere.
    stored = [p for p in (home / "storage").rglob("*") if p.is_file()]
    assert all(p.parent.name == "compute_logs" for p in stored), stored
    pickles = [p for p in home.rglob("*") if p.is_file() and p.read_bytes()[:1] == b"\x80"]
    assert not pickles, pickles


# -- "Operations" > "Proven converged": the revisions of all the run's accounts come from one `listRepos` ---


def test_a_run_proves_its_accounts_from_one_list_repos_call(world, proxy_for):  # noqa: F811
    """Four accounts. The README's sentence has no exception, the code two (`converged.latest_revs`): a run of
    up to three accounts asks `getLatestCommit` once per account instead, and `listRepos` pages hold 1,000
    repositories, so a PDS with more asks one call per page until it has seen the run's accounts."""
    db = world.db()
    users = [add_user(world, db, f"revs{n}") for n in range(4)]
    for sub, _, _ in users:
        add_moods(db, sub, ["one mood"])
    register_handles(world.instance, db)
    first, last = (partition_key(users[n][1], "mood") for n in (0, -1))
    order = world.instance.get_dynamic_partitions("handle")
    assert {h for _, h, _ in users} == set(order)
    assert run_range(world, first, last).success

    # Pages of 1,000 repositories until every account of the run is seen: on this PDS (its accounts come
    # from every test of the session), as many as it takes to reach the last of them.
    dids, pages, cursor = {did for _, _, did in users}, 0, None
    while dids:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = world.client.call("GET", LIST_REPOS, params=params)
        pages += 1
        dids -= {repo["did"] for repo in page["repos"]}
        cursor = page.get("cursor")
        assert cursor or not dids
    proxy = proxy_for()
    again = run_range(world, first, last)
    assert again.success
    synced = by_partition(again, "ASSET_MATERIALIZATION", "atproto_records")
    assert len(synced) == 4 and all(m.metadata["proven_converged"].value for m in synced.values())
    assert proxy.requests[LIST_REPOS] == pages, proxy.requests  # one call (one per 1,000 repositories)
    assert proxy.requests[LATEST] == 0, proxy.requests  # no per-account call for the revs


# -- "Operations" > "What a proven partition records": `acpipeline sync` ... starts no run ("unchanged since
# the last sync"; "nothing to sync" for a partition with nothing on either side) ----------------------------


def test_the_cli_starts_no_run_when_everything_is_unchanged_since_the_last_sync(
    world,
    proxy_for,  # noqa: F811
):
    db = world.db()
    sub, handle, _ = add_user(world, db, "steady")
    add_moods(db, sub, ["one", "two"])
    assert all(r.ok for r in sync(world, [handle], full=False).values())  # the marks of a clean sync
    proxy = proxy_for()

    done = cli("sync", "--handle", handle, env={"PDS_URL": proxy.url})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    rows = {line.split()[1]: line for line in out if line.startswith(handle)}
    assert set(rows) == set(MEDIA_NAMES)
    assert rows["mood"].rstrip().endswith("unchanged since the last sync"), rows["mood"]
    for media in set(MEDIA_NAMES) - {"mood"}:
        assert rows[media].rstrip().endswith("nothing to sync"), rows[media]
    assert out[-1].startswith(
        "synced 1 account, 6 partitions (0 run, 1 unchanged since the last sync, 5 with nothing to sync): "
        "0 created, 0 updated, 0 deleted, 0 failed items, in "
    ), out[-1]
    with open_instance(ensure_dagster_home()) as instance:
        assert instance.get_runs() == []  # no Dagster run at all
    assert not {APPLY, UPLOAD, "com.atproto.repo.listRecords"} & set(proxy.requests), proxy.requests


# -- "Operations" > "Sensor": ranges of exactly the changed partitions; only when that would be more than 50
# runs do ranges also cover the handles between them ------------------------------------------------------


def test_the_sensor_bridges_ranges_only_past_fifty_runs(world):
    db = world.db()
    handles = fake_users(db, [f"bridge{n:03d}.at.aesthetic.computer" for n in range(101)])
    driver = SensorDriver(world)
    assert driver.tick() == {}
    assert world.instance.get_dynamic_partitions("handle") == handles

    def changed_and_runs(every_other: int) -> tuple[set[str], list, dict[str, str]]:
        chosen = handles[: 2 * every_other : 2]  # not one next to another
        for handle in chosen:
            add_moods(db, f"auth0|{handle}", [f"new at {time.time()}"])
        runs_before = len(driver.runs)
        requested = driver.tick()
        return {partition_key(h, "mood") for h in chosen}, driver.runs[runs_before:], requested

    # 50 scattered partitions: 50 runs, one partition each
    changed, runs, requested = changed_and_runs(50)
    assert len(runs) == 50 and set(requested) == changed
    assert all(run.tags[RANGE_START_TAG] == run.tags[RANGE_END_TAG] for run in runs)

    # 51: one range from the first to the last, the 50 handles between them included
    changed, runs, requested = changed_and_runs(51)
    assert len(runs) == 1, [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in runs]
    start, end = runs[0].tags[RANGE_START_TAG], runs[0].tags[RANGE_END_TAG]
    covered = {partition_key(h, m) for h, m in range_members(handles, start, end)}
    assert covered == {partition_key(h, "mood") for h in handles} and changed <= set(requested)
    assert all(why == "source-changed" for why in requested.values())


# -- "Tapes: the oven's MP4 first": once the oven completes, the sensor sees the changed `mp4Status`/`mp4Url`


def test_the_sensor_requests_a_tape_whose_mp4_status_changed(world):
    db = world.db()
    (handle,) = fake_users(db, ["oven.at.aesthetic.computer"])
    tape = {
        "_id": ObjectId(),
        "user": f"auth0|{handle}",
        "code": "ovn9",
        "slug": "2024.3.1.12.0.0.000",
        "bucket": "user-aesthetic-computer",
        "when": T0,
        "mp4Status": "pending",
    }
    db["tapes"].insert_one(tape)
    key = partition_key(handle, "tape")
    driver = SensorDriver(world)
    assert driver.tick() == {key: "never-synced"}
    assert driver.tick() == {}
    db["tapes"].update_one({"_id": tape["_id"]}, {"$set": {"mp4Status": "processing"}})
    assert driver.tick() == {key: "source-changed"}  # the status alone
    assert driver.tick() == {}
    mp4_url = "https://at-blobs-aesthetic-computer.sfo3.digitaloceanspaces.com/tapes/ovn9.mp4"
    db["tapes"].update_one({"_id": tape["_id"]}, {"$set": {"mp4Status": "complete", "mp4Url": mp4_url}})
    assert driver.tick() == {key: "source-changed"}
    assert driver.tick() == {}


# -- "Operations" > "Schedule" and "Configuration": `ACPIPELINE_SYNC_TIMEZONE`, `ACPIPELINE_FULL_RECHECK_DAYS`


def test_the_schedule_runs_in_acpipeline_sync_timezone(tmp_path):
    """Read when the code location loads: a code server started with the variable (a fresh process)."""
    show = (
        "from acpipeline.definitions import defs\n"
        "s = defs.get_schedule_def('reconcile_schedule')\n"
        "print(s.execution_timezone, s.cron_schedule)\n"
    )
    env = {
        "ACPIPELINE_SYNC_TIMEZONE": "America/Los_Angeles",
        "ACPIPELINE_HOME": str(tmp_path / "home"),
        "ACPIPELINE_SYNC_CRON": "",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", show], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["America/Los_Angeles", "0", "3", "*", "*", "*"]
    assert reconcile_schedule.execution_timezone == "UTC"  # this process: unset, the default


def nightly_full_slice(world, instance, night: datetime) -> set[str]:
    """The handles the schedule's tick on `night` re-checks in full (its `acpipeline/full` ranges)."""
    requests = _schedule_tick(world, instance, night)
    order = instance.get_dynamic_partitions("handle")
    full = [r for r in requests if r.tags.get(FULL_TAG) == "true"]
    members = [m for r in full for m in range_members(order, r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG])]
    handles = {h for h, _ in members}
    assert sorted(members) == sorted((h, m) for h in handles for m in MEDIA_NAMES)  # whole accounts
    return handles


def test_acpipeline_full_recheck_days_sets_the_nightly_slice(world, monkeypatch):
    """Every account re-checked in full once in that many nights (default 7): a week of nightly ticks, then
    two with the setting at 2."""
    db = world.db()
    handles = {add_user(world, db, f"night{n}")[1] for n in range(4)}
    instance = get_instance()  # a schedule's context needs a persistent instance (DAGSTER_HOME)
    first = datetime(2026, 1, 1, 3, tzinfo=UTC)

    def nights(days: int) -> list[set[str]]:
        return [nightly_full_slice(world, instance, first + timedelta(days=d)) for d in range(days)]

    week = nights(7)
    assert sum(len(s) for s in week) == len(handles) and set().union(*week) == handles  # each once
    assert all(not s for s in nights(0))
    monkeypatch.setenv("ACPIPELINE_FULL_RECHECK_DAYS", "2")
    two = nights(2)
    assert [len(s) for s in two] == [2, 2] and two[0] | two[1] == handles
    assert nights(3)[2] == two[0]  # and again from the third night


# -- "Checking a configuration": a missing media collection only warns -------------------------------------


def test_the_doctor_warns_on_a_missing_media_collection(world, capsys):
    from acpipeline.demo.dataset import seed_dataset

    db = world.db()
    seed_dataset(db, world.media_root, world.create_account_unique, size="small")
    db["news-posts"].drop()
    assert "news-posts" not in db.list_collection_names()
    code = main(["doctor", "--json"])
    results = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    mongodb = results["mongodb"]
    assert mongodb["status"] == "warn" and mongodb["ok"], mongodb
    assert "6 of 7 collections" in mongodb["detail"] and "no news-posts yet" in mongodb["detail"], mongodb
    assert code == 0, results  # a warning is no failure
    assert all(r["ok"] for r in results.values()), results


# -- "Rules worth knowing" > "Records": short-code URLs `…/#{code}` (paintings), `…/${code}` (kidlisp) ------


def test_paintings_link_hash_code_and_kidlisp_dollar_code(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "links")
    (painting,) = add_paintings(world, db, sub, 1)
    kidlisp = {"_id": ObjectId(), "user": sub, "code": "kd7", "source": "(wipe purple)", "when": T0}
    db["kidlisp"].insert_one(kidlisp)
    results = sync(world, [handle], ["painting", "kidlisp"])
    assert all(r.ok and r.outcome.created == 1 for r in results.values()), [r.row() for r in results.values()]
    code = db["paintings"].find_one({"_id": painting})["code"]
    (value,) = [r["value"] for r in listed_over_http(world.pds_url, did, MEDIA["painting"].nsid)]
    assert value["acUrl"] == f"{AC}/#{code}" and value["imageUrl"] == f"{AC}/media/paintings/{code}"
    (value,) = [r["value"] for r in listed_over_http(world.pds_url, did, MEDIA["kidlisp"].nsid)]
    assert value["acUrl"] == f"{AC}/$kd7"


# -- "Rules worth knowing" > "Too long": a news headline over 300 is rejected, never truncated; the record it
# had is kept --------------------------------------------------------------------------------------------


def test_a_news_headline_over_300_is_a_failed_item_and_its_record_stays(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "editor")

    fits, over = news_post(sub, 1, "h" * 300), news_post(sub, 2, "o" * 301)
    db["news-posts"].insert_many([fits, over])
    first = sync(world, [handle], ["news"])[(handle, "news")]
    assert first.ok and first.outcome.created == 1, first.row()
    failures = first.row()["failed_items"]
    assert [f["ref"] for f in failures] == [str(over["_id"])]
    assert "headline: maxLength 300 UTF-8 bytes (has 301)" in failures[0]["reason"], failures
    listed = listed_over_http(world.pds_url, did, MEDIA["news"].nsid)
    assert [r["value"]["headline"] for r in listed] == ["h" * 300]  # whole, and nothing cut to fit

    # edited over the limit: failed, and the record it had is kept as it was
    db["news-posts"].update_one({"_id": fits["_id"]}, {"$set": {"title": "h" * 299 + "é"}})  # 301 bytes
    second = sync(world, [handle], ["news"])[(handle, "news")]
    assert second.ok and (second.outcome.updated, second.outcome.deleted) == (0, 0), second.row()
    assert {f["ref"] for f in second.row()["failed_items"]} == {str(fits["_id"]), str(over["_id"])}
    assert listed_over_http(world.pds_url, did, MEDIA["news"].nsid) == listed


# -- "Reliability": a 429 on a repository write slows down that account's writes only ----------------------


def test_a_429_on_one_accounts_write_holds_that_accounts_writes_only(world, proxy_for, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ACPIPELINE_PDS_RETRY_BUDGET_S", "3")
    db = world.db()
    limited_sub, limited, limited_did = add_user(world, db, "limited")
    spared_sub, spared, spared_did = add_user(world, db, "spared")
    add_moods(db, limited_sub, ["held back"])
    add_moods(db, spared_sub, ["goes through", "also"])
    proxy = proxy_for(retry_after=120)
    refuse_writes_of(proxy, limited_did)

    held = sync(world, [limited], ["mood"], full=False)[(limited, "mood")]
    assert held.ok and held.deferred, held.row()
    started = time.monotonic()
    free = sync(world, [spared], ["mood"], full=False)[(spared, "mood")]  # after the 429, another account
    assert free.ok and not free.deferred and free.check_passed, free.row()
    assert free.outcome.created == 2 and time.monotonic() - started < 60
    assert len(listed_over_http(world.pds_url, spared_did, MEDIA["mood"].nsid)) == 2
    assert proxy.faults[("429", APPLY)] == 1


# -- "Reliability" > "Rate limits that outlast the retry budget" --------------------------------------------


def test_a_deferring_run_is_tagged_acpipeline_deferred(world, proxy_for, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ACPIPELINE_PDS_RETRY_BUDGET_S", "3")
    db = world.db()
    sub, handle, _ = add_user(world, db, "tagged")
    add_moods(db, sub, ["later"])
    refuse_writes_of(proxy_for(retry_after=120))
    result = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert result.ok and result.deferred, result.row()
    (run,) = world.instance.get_runs(filters=RunsFilter(tags={DEFERRED_TAG: "true"}))
    assert run.run_id == result.run_id and run.status == DagsterRunStatus.SUCCESS
    assert run.tags["acpipeline/deferred_until"] == result.outcome.deferred_until


def test_no_blob_is_uploaded_for_a_batch_the_pds_would_refuse(world, proxy_for, monkeypatch):  # noqa: F811
    """After the account's 429 (its moods), its paintings defer at once: no upload, no second 429."""
    monkeypatch.setenv("ACPIPELINE_PDS_RETRY_BUDGET_S", "3")
    db = world.db()
    sub, handle, did = add_user(world, db, "uploads")
    add_moods(db, sub, ["first in line"])
    add_paintings(world, db, sub, 2)
    proxy = proxy_for(retry_after=120)
    refuse_writes_of(proxy, did)
    moods = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert moods.deferred and proxy.requests[APPLY] == 1
    paintings = sync(world, [handle], ["painting"], full=False)[(handle, "painting")]
    assert paintings.ok and paintings.deferred, paintings.row()
    key = partition_key(handle, "painting")
    (record,) = world.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=atproto_records.key, asset_partitions=[key]), limit=1
    ).records
    assert record.asset_materialization and record.asset_materialization.metadata["blobs"].value == 2
    assert paintings.outcome.deferred_writes == 2
    assert proxy.requests[UPLOAD] == 0 and paintings.outcome.blobs_uploaded == 0
    assert proxy.requests[APPLY] == 1  # no second 429 either


def test_the_cli_says_deferred_until_and_exits_0(world, proxy_for):  # noqa: F811
    db = world.db()
    sub, handle, _ = add_user(world, db, "patient")
    add_moods(db, sub, ["soon", "sooner"])
    proxy = proxy_for(retry_after=120)
    refuse_writes_of(proxy)
    before = datetime.now(UTC)
    done = cli(
        "sync",
        "--handle",
        handle,
        "--moods-only",
        env={"PDS_URL": proxy.url, "ACPIPELINE_PDS_RETRY_BUDGET_S": "3"},
    )
    after = datetime.now(UTC)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith(handle)]
    shown = re.search(r"deferred until (\d\d:\d\d) UTC \(rate limit\)$", row.rstrip())
    assert shown, row
    # the 429's retry-after (120 s) from when it came, between the command's start and its end
    earliest, latest = before + timedelta(seconds=119), after + timedelta(seconds=122)
    window = {
        (earliest + timedelta(seconds=s)).strftime("%H:%M")
        for s in range(int((latest - earliest).total_seconds()) + 1)
    }
    assert shown.group(1) in window, (shown.group(1), window)
    totals = done.stdout.strip().splitlines()[-1]
    assert (
        f"1 partition deferred by the PDS's rate limit until {shown.group(1)} UTC "
        "(the sensor resumes them then)" in totals
    ), totals
    assert proxy.faults[("429", APPLY)] == 1
