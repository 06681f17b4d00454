"""The Dagster UI for real: dagster-webserver and dagster-daemon as an operator runs them, a partition
backfill launched through the GraphQL API (as the UI's "Materialize" dialog does), and a browser on the
asset page.

One webserver and one daemon serve the whole module (they take ~30 s to start on two cores). The browser
is Debian's Chromium driven by Playwright: `make test` installs both; without them the browser test fails
and says how to install them.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from bson import ObjectId
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

# the UI's own GraphQL, as the bench sends it
from acpipeline.bench.backfill_pass import BACKFILL_STATUS, LAUNCH
from acpipeline.core.media import MEDIA, MEDIA_NAMES
from acpipeline.definitions import build_definitions
from acpipeline.demo.media_server import MediaServer
from acpipeline.localpds.server import free_port
from acpipeline.operations.wipe import run_wipe
from acpipeline.resources.pds import PdsClient
from acpipeline.settings import DAGSTER_ENV
from acpipeline.sync.partitions import partition_key, range_members, register_handles
from acpipeline.sync.runner import run_partitions

from .helpers import T0, add_moods
from .oracle import js_iso

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser test fails and says how to install it; the others run
    sync_playwright = None

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("ACPIPELINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RECORDS = AssetKey("atproto_records")
POOL_LIMIT = 2  # dagster.yaml: concurrency.pools.default_limit
BACKFILL_USERS = 4
WRITE_DELAY_S = 2.0
MOODS_PER_USER = 800  # four applyWrites: with WRITE_DELAY_S, a record stage lasts ~8 s
GATE_S = 50.0  # the longest SlowWrites holds a write at its gate: under the PDS client's 60 s read timeout


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@dataclass
class Dagster:
    url: str
    home: Path
    db: object
    handles: list[str]
    dids: dict[str, str]
    logs: Path
    pds_url: str  # the real PDS (the servers reach it through SlowWrites)
    slow: "SlowWrites"

    def instance(self) -> DagsterInstance:
        return DagsterInstance.get()

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return _graphql(self.url, query, variables)


class SlowWrites:
    """A reverse proxy in front of the real PDS that holds every applyWrites for `delay_s` first, like a
    remote PDS would: record stages then last long enough for the runs' stages to contend for the pool. While
    `gate` is clear it also holds them until it is set (at most GATE_S: a held write is still answered
    before the client's read timeout), so a record stage keeps its pool slot as long as a test needs."""

    def __init__(self, target: str, delay_s: float):
        self.target, self.delay_s = target.rstrip("/"), delay_s
        self.client = httpx.Client(timeout=120)
        self.gate = threading.Event()
        self.gate.set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                proxy.forward(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                proxy.forward(self, "POST")

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a run killed at teardown hangs up mid-answer: not the test's concern

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, request: BaseHTTPRequestHandler, method: str) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if "com.atproto.repo.applyWrites" in request.path:
            self.gate.wait(GATE_S)
            time.sleep(self.delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        answer = self.client.request(method, self.target + request.path, content=body, headers=headers)
        request.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(answer.content)))
        request.end_headers()
        request.wfile.write(answer.content)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    """End the process and everything it started (its code servers, its runs), by its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_loaded(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster-webserver exited:\n{log.read_text()[-3000:]}")
        try:
            entries = _graphql(url, query)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, AssertionError, KeyError, TypeError):
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
            assert not errors, errors
            return
        time.sleep(1)
    raise AssertionError(
        f"the code location did not load within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
    )


def _seed(db, pds_url: str) -> tuple[list[str], dict[str, str]]:
    """BACKFILL_USERS users with a PDS account, MOODS_PER_USER moods and a piece each."""
    client = PdsClient(pds_url)
    handles, dids = [], {}
    try:
        for n in range(BACKFILL_USERS):
            handle = f"ui{n}{secrets.token_hex(3)}.at.aesthetic.computer"
            password = secrets.token_urlsafe(16)
            dids[handle] = client.create_account(handle, password, f"{handle}@example.com")
            sub = f"auth0|ui{n}{ObjectId()}"
            db["users"].insert_one(
                {"_id": sub, "atproto": {"did": dids[handle], "handle": handle, "password": password}}
            )
            add_moods(db, sub, [f"mood {i} of {handle}" for i in range(MOODS_PER_USER)])
            db["pieces"].insert_one(
                {"_id": ObjectId(), "user": sub, "slug": f"piece{n}", "when": T0, "code": f"p{n}"}
            )
            handles.append(handle)
    finally:
        client.close()
    return handles, dids


@pytest.fixture(scope="module")
def dagster(pds_url, tmp_path_factory) -> Iterator[Dagster]:
    root = tmp_path_factory.mktemp("ui")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    with ExitStack() as stack:
        env = stack.enter_context(pytest.MonkeyPatch.context())
        media = MediaServer(root / "media").start()
        stack.callback(media.stop)
        slow = SlowWrites(pds_url, WRITE_DELAY_S)
        stack.callback(slow.close)
        env.setenv("ACPIPELINE_HOME", str(root / "home"))
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("PDS_URL", slow.url)
        # The sensor and the schedule start stopped; the sensor test switches the sensor on in the UI's way.
        env.setenv("ACPIPELINE_AUTOMATION", "stopped")
        env.delenv("MONGODB_CONNECTION_STRING", raising=False)
        for name, template in media.url_templates().items():
            env.setenv(f"ACPIPELINE_{name.upper()}", template)

        from acpipeline.resources.mongo import MongoResource

        mongo = MongoResource()
        stack.callback(mongo.close)
        db = mongo.db()
        handles, dids = _seed(db, pds_url)
        register_handles(DagsterInstance.get(), db)  # the dynamic partitions, in the servers' instance

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        web_log, daemon_log = root / "webserver.log", root / "daemon.log"
        # Started from the project's files alone: Dagster's settings for range runs are not exported here
        # (the test process itself has them, from importing the code location); the services must set them.
        environment = {k: v for k, v in os.environ.items() if k not in DAGSTER_ENV}
        webserver = _start(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            environment,
            web_log,
        )
        stack.callback(_stop, webserver)
        daemon = _start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], environment, daemon_log)
        stack.callback(_stop, daemon)  # stopped first: no run starts while the webserver goes
        _wait_until_loaded(url, webserver, web_log)
        yield Dagster(url, home, db, handles, dids, root, pds_url, slow)


DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _step_intervals(instance: DagsterInstance, run_ids: list[str], step: str) -> list[tuple[float, float]]:
    """(start, end) of the step in each run, from the runs' event logs."""
    intervals = []
    for run_id in run_ids:
        events = instance.all_logs(
            run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
        )
        times = {e.dagster_event.event_type: e.timestamp for e in events if e.step_key == step}
        intervals.append((times[DagsterEventType.STEP_START], times[DagsterEventType.STEP_SUCCESS]))
    return intervals


def _partitions_of(instance: DagsterInstance, run) -> list[str]:
    """A backfill run's partitions: the range its policy gave it."""
    start = run.tags["dagster/asset_partition_range_start"]
    end = run.tags["dagster/asset_partition_range_end"]
    order = instance.get_dynamic_partitions("handle")
    return [partition_key(h, m) for h, m in range_members(order, start, end)]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


BACKFILL_MEDIA = ("mood", "piece", "kidlisp", "tape")  # four runs at once: two wait for the pool


def test_backfill_launched_through_graphql_syncs_its_partitions_within_the_pool(dagster):
    keys = [partition_key(h, m) for m in BACKFILL_MEDIA for h in dagster.handles]
    params = {
        "assetSelection": [{"path": [n]} for n in ("source_items", "media_blobs", "atproto_records")],
        "partitionNames": keys,
        "title": "ui test",
    }
    # The PDS holds the record stages' writes until a record stage waits for a pool slot (both slots then
    # held by stages that cannot finish): the runs contend for the pool however their start-ups fall.
    instance = dagster.instance()
    contended = threading.Event()

    def open_the_gate_once_a_stage_waits() -> None:
        give_up = time.monotonic() + 600  # then the writes go on, and the test fails on `contended`
        while not dagster.slow.gate.is_set() and time.monotonic() < give_up:
            pending = instance.event_log_storage.get_concurrency_info("pds_writes").pending_steps
            if any(step.assigned_timestamp is None for step in pending):
                contended.set()
                dagster.slow.gate.set()
            time.sleep(0.2)
        dagster.slow.gate.set()

    dagster.slow.gate.clear()
    watcher = threading.Thread(target=open_the_gate_once_a_stage_waits, daemon=True)
    watcher.start()
    try:
        launched = dagster.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        deadline = time.monotonic() + 900
        status = None
        while time.monotonic() < deadline:
            query = dagster.graphql(BACKFILL_STATUS, {"id": backfill_id})
            status = query["partitionBackfillOrError"]["status"]
            if status in DONE:
                break
            time.sleep(2)
    finally:
        dagster.slow.gate.set()
        watcher.join(10)
    logs = (dagster.logs / "daemon.log").read_text()[-3000:]
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), f"backfill {status}:\n{logs}"

    runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    # many partitions per run: Dagster groups the subset by the dimension with fewer keys (here a tie: 4
    # handles x 4 media), one run per group, each covering the whole of the other dimension
    covered = [_partitions_of(instance, r) for r in runs]
    assert sorted(k for c in covered for k in c) == sorted(keys)
    assert len(runs) == 4 and all(len(c) == 4 for c in covered), covered
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
    # the fast path for range runs with nothing exported: one planned event per asset and run, not one per
    # asset and partition (the daemon created these runs; `acpipeline.settings.DAGSTER_ENV`)
    for run in runs:
        planned = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        assert len(planned) == len(params["assetSelection"]), (run.run_id, len(planned))

    client = PdsClient(dagster.pds_url)
    for handle in dagster.handles:
        listed = client.list_records(dagster.dids[handle], MEDIA["mood"].nsid)
        assert len(listed) == MOODS_PER_USER, handle
    client.close()
    assert instance.get_materialized_partitions(RECORDS) >= set(keys)

    # The pool `pds_writes` held the record stages of the concurrent runs to two at a time.
    intervals = _step_intervals(instance, [r.run_id for r in runs], "atproto_records")
    overlap = _max_overlap(intervals)
    blocked = sum(
        1
        for r in runs
        for e in instance.all_logs(r.run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if e.dagster_event and "blocked by limit for pool pds_writes" in (e.dagster_event.message or "")
    )
    print(f"record stages: at most {overlap} at once (pool limit {POOL_LIMIT}), {blocked} held back")
    assert contended.is_set(), "no record stage waited for a pool slot while the others' writes were held"
    assert overlap == POOL_LIMIT  # both slots were in use at once, never more
    assert blocked, "Dagster logged no record stage held back by the pool's limit"
    pool = instance.event_log_storage.get_concurrency_info("pds_writes")
    assert pool.slot_count == POOL_LIMIT and not pool.claimed_slots


SENSOR = {
    "repositoryLocationName": "acpipeline.definitions",
    "repositoryName": "__repository__",
    "sensorName": "new_content_sensor",
}
START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on PythonError { message } }
}"""
SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 10) { status timestamp error { message } } } }
  }
}"""


def test_sensor_in_the_daemon_brings_new_content_to_the_pds(dagster):
    """A mood written while the daemon runs the sensor reaches the PDS through a run the sensor requested.
    How soon is printed (the sensor ticks every 15 s; the platform benchmark measures it), not asserted:
    the time-outs here only bound a test that would otherwise wait forever."""
    handle = dagster.handles[1]
    sub = dagster.db["users"].find_one({"atproto.handle": handle})["_id"]
    did = dagster.dids[handle]
    started = dagster.graphql(START_SENSOR, {"selector": SENSOR})["startSensor"]
    assert started["__typename"] == "Sensor", started

    def ticks() -> list[dict]:
        found = dagster.graphql(SENSOR_TICKS, {"selector": SENSOR})["sensorOrError"]
        return found["sensorState"]["ticks"]

    deadline = time.monotonic() + 300
    while not [t for t in ticks() if t["status"] in ("SUCCESS", "SKIPPED")]:
        assert time.monotonic() < deadline, ticks()
        time.sleep(1)
    assert not [t for t in ticks() if t["status"] == "FAILURE"], ticks()

    # the first tick took its baseline; a mood written now is new content
    mood = add_moods(dagster.db, sub, ["written while the daemon watches"])[0]
    written, written_at = time.monotonic(), time.time()
    client = PdsClient(dagster.pds_url)
    try:
        while True:
            listed = client.list_records(did, MEDIA["mood"].nsid)
            found = [r for r in listed if r["value"]["ref"] == str(mood)]
            if found:
                break
            assert time.monotonic() - written < 600, f"not on the PDS after 10 minutes; ticks: {ticks()}"
            time.sleep(2)
    finally:
        client.close()
    print(f"new mood on the PDS {time.monotonic() - written:.0f} s after it was written")

    # It came through a run the sensor requested for that partition after the write, and that run succeeded.
    instance = dagster.instance()
    key = partition_key(handle, "mood")
    deadline = time.monotonic() + 300
    while True:
        sensor_runs = [
            record
            for record in instance.get_run_records(filters=RunsFilter(tags={"acpipeline/trigger": "sensor"}))
            if record.create_timestamp.timestamp() >= written_at - 1
        ]
        carried = [r.dagster_run for r in sensor_runs if key in _partitions_of(instance, r.dagster_run)]
        if any(run.status == DagsterRunStatus.SUCCESS for run in carried):
            break
        runs = [(r.dagster_run.run_id, r.dagster_run.status, r.dagster_run.tags) for r in sensor_runs]
        assert time.monotonic() < deadline, f"no sensor run of {key} succeeded: {runs}"
        time.sleep(2)
    doc = dagster.db["moods"].find_one({"_id": mood})
    assert found[0]["value"] == {
        "$type": MEDIA["mood"].nsid,
        "mood": "written while the daemon watches",
        "when": js_iso(doc["when"]),
        "ref": str(mood),
    }
    assert doc["atproto"]["uri"] == found[0]["uri"]
    for record in sensor_runs:
        stats = instance.get_run_stats(record.dagster_run.run_id)
        created = record.create_timestamp.timestamp() - written_at
        marks = {"started": stats.start_time, "ended": stats.end_time}
        after = ", ".join(f"{name} {at - written_at:.1f} s" for name, at in marks.items() if at)
        print(f"  sensor run: created {created:.1f} s after the write, {after}")
    assert not [t for t in ticks() if t["status"] == "FAILURE"], ticks()


def _ensure_materialized(dagster: Dagster) -> str:
    """A partition with a materialization (the backfill test makes them; alone, this test syncs one)."""
    instance = dagster.instance()
    done = instance.get_materialized_partitions(RECORDS)
    key = partition_key(dagster.handles[0], "mood")
    if key not in done:
        results, _ = run_partitions(build_definitions(), instance, [dagster.handles[0]], ["mood"])
        assert all(r.ok for r in results)
    return key


def _playwright():
    if sync_playwright is None:
        pytest.fail("Playwright for Python is missing: pip install -e '.[test]' (make install) installs it")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: apt-get install -y chromium (make test installs it)")
    return sync_playwright


def _dismiss_welcome(page) -> None:
    """A fresh instance greets the first visitor with a newsletter dialog: skip it."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except PlaywrightTimeout:
        return
    skip.click()


@contextmanager
def _browser_page(sync_playwright) -> Iterator:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _metadata_row(page, label: str):
    return page.locator("tr", has=page.locator("td", has_text=re.compile(f"^{label}$"))).first


def test_browser_shows_the_partitions_a_materializations_metadata_and_a_wipe(dagster, tmp_path):
    sync_playwright = _playwright()
    key = _ensure_materialized(dagster)
    shots = Path(os.environ.get("ACPIPELINE_UI_SHOTS") or tmp_path)  # screenshots, to look at
    partition_page = f"{dagster.url}/assets/atproto_records?view=partitions&partition={key}"
    with _browser_page(sync_playwright) as page:
        page.goto(f"{dagster.url}/assets/atproto_records?view=partitions")
        _dismiss_welcome(page)
        # handle x media: every registered handle, six media each
        selected = len(dagster.handles) * len(MEDIA_NAMES)
        expect(page.get_by_text(f"{selected} Partitions Selected")).to_be_visible()
        for handle in dagster.handles:
            expect(page.locator(f'[data-tooltip="{handle}"]').first).to_be_visible()
        expect(page.get_by_text("Materialized (", exact=False)).to_be_visible()
        page.screenshot(path=str(shots / "partitions.png"))

        # one partition: its latest materialization with the record stage's metadata
        page.goto(partition_page)
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
        expect(_metadata_row(page, "desired").locator("td").nth(1)).to_have_text(str(MOODS_PER_USER))
        for label in ("created", "commits", "duration_s", "records"):
            expect(_metadata_row(page, label)).to_be_visible()
        page.screenshot(path=str(shots / "materialization.png"))

        # another partition of the same batched run: its own metadata, and its own check result
        other = partition_key(dagster.handles[1], "mood")
        page.goto(f"{dagster.url}/assets/atproto_records?view=partitions&partition={other}")
        expect(page.get_by_text(other, exact=True).first).to_be_visible()
        expect(_metadata_row(page, "did").locator("td").nth(1)).to_have_text(dagster.dids[dagster.handles[1]])
        page.screenshot(path=str(shots / "other-partition.png"))
        expect(page.get_by_text("View all historical events", exact=False)).to_be_visible()
        # the check: its latest evaluation names its partition, and its history holds one evaluation per
        # partition of the batched backfill runs (the UI's history table has no partition column)
        page.goto(f"{dagster.url}/assets/atproto_records?view=checks")
        page.get_by_text("pds_holds_desired_records").first.click()
        expect(page.get_by_text("Partition", exact=True).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^ui\w+\.at\.aesthetic\.computer\|\w+$")).first).to_be_visible()
        page.get_by_text("Execution history", exact=True).click()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
        passed = page.get_by_text("Passed", exact=True).count()
        page.screenshot(path=str(shots / "check-history.png"), full_page=True)
        assert passed >= len(dagster.handles) * len(BACKFILL_MEDIA), passed

    # after a wipe the partition says so, and the asset's check fails until a sync restores it
    wiped = run_wipe(build_definitions(), dagster.instance(), dagster.handles[0], ["mood"], confirm=True)
    assert wiped.ok, wiped.error
    with _browser_page(sync_playwright) as page:
        page.goto(partition_page)
        _dismiss_welcome(page)
        expect(_metadata_row(page, "wiped").locator("td").nth(1)).to_have_text("true")
        expect(_metadata_row(page, "on_pds").locator("td").nth(1)).to_have_text("0")
        page.goto(f"{dagster.url}/assets/atproto_records?view=checks")
        expect(page.get_by_text("Wiped: the PDS no longer holds").first).to_be_visible()
        expect(page.get_by_text("Failed").first).to_be_visible()
        page.screenshot(path=str(shots / "wiped.png"))
