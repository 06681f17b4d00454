"""README claims that had only unit tests, end to end against the real PDS, real ffmpeg and the demo storage:
the storage size caps, tapes re-encoded to fit a PDS with a small `blobUploadLimit`, a live item whose source
broke keeping its record, and the sensor and schedule running through the daemon as shipped."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from bson import ObjectId
from dagster import DagsterInstance, Definitions, in_process_executor
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, TickStatus

from acpipeline.definitions import build_resources
from acpipeline.demo.dataset import build_tape_zip
from acpipeline.localpds import server as localpds
from acpipeline.resources.pds import PdsClient
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.assets import atproto_records, media_blobs, source_items
from acpipeline.sync.runner import run_partitions

from .helpers import T0, add_user, sync
from .oracle import listed_over_http
from .test_reliability import USER_BUCKET, add_paintings, tiny_png

ROOT = Path(__file__).resolve().parents[1]
PAINTING = "computer.aesthetic.painting"
TAPE = "computer.aesthetic.tape"


def add_tape(world, db, sub: str, code: str, width: int, height: int, frames: int) -> str:
    slug = f"{code}-slug"
    build_tape_zip(
        world.media_root / USER_BUCKET / sub / f"{slug}.zip", width, height, frames, rng=random.Random(code)
    )
    doc = {"_id": ObjectId(), "user": sub, "slug": slug, "code": code, "bucket": USER_BUCKET, "nuked": False}
    db["tapes"].insert_one({**doc, "when": T0 + timedelta(minutes=len(code))})
    return str(doc["_id"])


def test_storage_size_caps_fail_the_item_that_is_too_large_and_the_rest_syncs(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "caps")
    small = add_paintings(world, db, sub, 2)
    large = add_paintings(world, db, sub, 1, start=2)[0]
    slug = db["paintings"].find_one({"_id": large})["slug"]
    noise = tiny_png(1, 64)  # ~16 KB: noise does not compress
    (world.media_root / USER_BUCKET / sub / "painting" / f"{slug}.png").write_bytes(noise)
    big_tape = add_tape(world, db, sub, "bigz", 64, 48, 24)
    zip_size = (world.media_root / USER_BUCKET / sub / "bigz-slug.zip").stat().st_size

    resources = build_resources()
    templates = world.media.url_templates()
    resources["storage"] = StorageResource(
        image_url=templates["image_url"],
        guest_image_url=templates["guest_image_url"],
        zip_url=templates["zip_url"],
        blobs_url=templates["blobs_url"],
        max_image_bytes=4_000,  # the small PNGs are ~600 bytes, the noisy one ~16 KB
        max_zip_bytes=zip_size - 1,
    )
    defs = Definitions(
        assets=[source_items, media_blobs, atproto_records], resources=resources, executor=in_process_executor
    )
    results, _ = run_partitions(defs, world.instance, [handle], ["painting", "tape"], full=True)
    failed = {f["ref"]: f["reason"] for r in results for f in r.row()["failed_items"]}
    assert "larger than 4000 bytes" in failed[str(large)], failed
    assert f"larger than {zip_size - 1} bytes" in failed[big_tape], failed
    assert all(r.ok for r in results), [r.row() for r in results]
    assert {r["value"]["ref"] for r in listed_over_http(world.pds_url, did, PAINTING)} == {
        str(i) for i in small
    }


def test_tapes_are_re_encoded_to_fit_a_pds_with_a_small_blob_upload_limit(world, monkeypatch):
    db = world.db()
    sub, handle, shared_did = add_user(world, db, "fits")  # an account on the shared PDS, replaced below
    ref = add_tape(world, db, sub, "fit1", 96, 64, 60)

    # What the tape weighs at the first attempt (3x, the oven's settings), on the shared PDS.
    first = sync(world, [handle], ["tape"])[(handle, "tape")]
    assert first.ok and not first.row()["failed_items"], first.row()
    (shared,) = listed_over_http(world.pds_url, shared_did, TAPE)
    default_size = shared["value"]["video"]["size"]

    limit = default_size // 2
    with localpds.start(blob_upload_limit=limit, log=lambda *_: None) as small:
        client = PdsClient(small.url)
        password = "pw-fits-small"
        small_handle = f"fits{ObjectId()}".lower()[:18] + ".at.aesthetic.computer"
        did = client.create_account(small_handle, password, f"{small_handle}@example.com")
        client.close()
        db["users"].update_one(
            {"_id": sub}, {"$set": {"atproto": {"did": did, "handle": small_handle, "password": password}}}
        )
        db["tapes"].update_one({"_id": ObjectId(ref)}, {"$unset": {"atproto": "", "at": ""}})
        monkeypatch.setenv("PDS_URL", small.url)
        result = sync(world, [small_handle], ["tape"])[(small_handle, "tape")]
        assert result.ok and not result.row()["failed_items"], result.row()
        (record,) = listed_over_http(small.url, did, TAPE)
    video = record["value"]["video"]
    assert video["mimeType"] == "video/mp4" and 0 < video["size"] <= limit < default_size, (video, limit)
    print(
        f"\nFIGURES blobUploadLimit {limit} bytes: the tape re-encoded from {default_size} to {video['size']}"
    )


def test_a_live_item_whose_source_broke_keeps_its_record(world):
    db = world.db()
    sub, handle, did = add_user(world, db, "keeps")
    ids = add_paintings(world, db, sub, 3)
    first = sync(world, [handle], ["painting"])[(handle, "painting")]
    assert first.ok and first.outcome.created == 3, first.row()
    before = {r["value"]["ref"]: r for r in listed_over_http(world.pds_url, did, PAINTING)}

    # The owner's first painting is still live, but now names an image storage does not have (a slug
    # edited to one never uploaded): its new value cannot be built, so its record stays as it was.
    db["paintings"].update_one({"_id": ids[0]}, {"$set": {"slug": "2024.9.9.9.9.9.999"}})
    again = sync(world, [handle], ["painting"])[(handle, "painting")]
    assert again.ok, again.row()
    reasons = {f["ref"]: f["reason"] for f in again.row()["failed_items"]}
    assert list(reasons) == [str(ids[0])] and "404" in reasons[str(ids[0])], reasons
    assert (again.outcome.created, again.outcome.updated, again.outcome.deleted) == (0, 0, 0)
    after = {r["value"]["ref"]: r for r in listed_over_http(world.pds_url, did, PAINTING)}
    assert after == before  # the record of the failed item is kept as it was, the others untouched
    assert db["paintings"].find_one({"_id": ids[0]})["atproto"]["uri"] == before[str(ids[0])]["uri"]


def test_the_sensor_and_schedule_run_through_the_daemon_as_shipped(world, tmp_path):
    """The project's dagster.yaml and workspace.yaml, no setting about automation: the daemon ticks the sensor
    and holds the schedule running without anyone turning them on."""
    home = tmp_path / "shipped"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "ACPIPELINE_AUTOMATION"}
    env["DAGSTER_HOME"] = str(home)
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as daemon_output:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=daemon_output,
            start_new_session=True,
        )

    def evaluated() -> list:  # ticks that ran the sensor to its end: runs requested, or nothing to request
        return [t for t in ticks if t.status in (TickStatus.SUCCESS, TickStatus.SKIPPED)]

    def failed() -> list:
        return [t for t in ticks if t.status == TickStatus.FAILURE]

    ticks: list = []
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            # A generous time-out: alone the daemon ticks the sensor within ~15 s; beside the platform
            # benches on a 2-core machine it once took longer than 240 s.
            deadline = time.monotonic() + 420
            states: dict[str, InstigatorStatus] = {}
            while time.monotonic() < deadline and not failed() and not (evaluated() and len(states) == 2):
                time.sleep(2)
                for state in instance.all_instigator_state():
                    states[state.name] = state.status
                    if state.instigator_type == InstigatorType.SENSOR:
                        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(30)
    assert not failed(), [t.error.message if t.error else t.status for t in failed()]
    output = daemon_log.read_text(errors="replace")[-3000:]
    assert evaluated(), f"the sensor never completed a tick: {[t.status for t in ticks]}; daemon: {output}"
    assert states.get("new_content_sensor") == InstigatorStatus.DECLARED_IN_CODE, states
    assert states.get("reconcile_schedule") == InstigatorStatus.DECLARED_IN_CODE, states
