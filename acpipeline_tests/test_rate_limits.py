"""Rate limits that outlast the retry budget, against the real PDS: through a limiter that counts write points
per window and answers with the PDS's headers, and the reference PDS with its own limits switched on. The
partition stops cleanly (what was written stays, linked), reports itself deferred until the reset, and the
sensor requests it again once that time has come; the next run finishes it."""

from __future__ import annotations

import time
from datetime import datetime

from acpipeline.core.media import MEDIA
from acpipeline.demo.dataset import seed_dataset
from acpipeline.localpds import server as localpds
from acpipeline.report import status_word
from acpipeline.resources.pds import PdsClient

from .faultproxy import FaultProxy, HeldWindowLimiter
from .helpers import add_moods, add_user, sync
from .oracle import assert_mirrored, expected_moods, listed_over_http
from .test_operations import SensorDriver
from .test_reliability import assert_rerun_writes_nothing, proxy_for  # noqa: F401 (a fixture)

MOOD = "computer.aesthetic.mood"
HEAVY = "jeffrey.at.aesthetic.computer"


def test_a_limit_beyond_the_retry_budget_defers_the_partition_and_the_sensor_resumes_it(
    world,
    proxy_for,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("ACPIPELINE_PDS_RETRY_BUDGET_S", "3")
    db = world.db()
    sub, handle, did = add_user(world, db, "limited")
    add_moods(db, sub, [f"mood {i}" for i in range(450)])  # batches of 200, 200 and 50 creates
    sensor = SensorDriver(world)
    sensor.tick()  # the baseline (its run requests are made as if they succeeded)

    # 1,250 points a window: the first two batches (600 points each) go through, the third is refused. The
    # window ends when the test releases it (a slow run cannot see it reset between two batches), and the 429
    # names a reset 20 s ahead at least: still ahead when the sensor first ticks.
    limiter = HeldWindowLimiter(points=1250, window_s=20, ahead_s=20)
    proxy_for(limiter=limiter)
    result = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    meta = result.outcome
    assert result.ok and result.deferred, result.row()
    # Deferred until the reset the 429 announced, without waiting for it: one 429 (the window is held, so any
    # write sent after it would be refused and announced again), two batches written.
    until = datetime.fromisoformat(meta.deferred_until).timestamp()
    assert len(limiter.announced) == 1 and limiter.announced[0] <= until <= limiter.announced[0] + 1
    assert (meta.created, meta.deferred_writes, limiter.refused) == (400, 50, 1)  # one 429, no storm
    assert status_word(result.row()).startswith("deferred until")
    assert result.check_passed is False  # the partition does not look synced
    listed = listed_over_http(world.pds_url, did, MOOD)
    assert len(listed) == 400
    assert db["moods"].count_documents({"user": sub, "atproto.rkey": {"$exists": True}}) == 400

    # The sensor learns of it from the run, and requests it once the window has reset.
    assert sensor.tick() == {} and handle + "|mood" in sensor.state().deferred
    time.sleep(max(0.0, until - time.time()) + 0.5)
    limiter.release()  # the window the 429 named has ended
    assert sensor.tick() == {handle + "|mood": "rate-limit-reset"}
    assert sensor.state().deferred == {}

    again = sync(world, [handle], ["mood"], full=False)[(handle, "mood")]
    assert again.ok and not again.deferred and again.check_passed, again.row()
    assert again.outcome.created == 50
    assert_mirrored(world.pds_url, db, did, "moods", MOOD, expected_moods(db, sub))
    assert_rerun_writes_nothing(world, handle, ["mood"])
    print(f"\nFIGURES rate limit: 1 partition deferred ({limiter.refused} 429), resumed after the reset")


def test_the_reference_pds_with_its_own_rate_limits_defers_the_heavy_user(world, monkeypatch):
    """The bench dataset's heavy user (2,867 creates: 8,601 points) against the reference PDS with its
    limits on (5,000 write points an hour per account): what the hour allows is written and linked, the
    rest deferred until the hour resets, after a single 429."""
    with localpds.start(rate_limits=True, log=lambda *_: None) as limited:
        client = PdsClient(limited.url)

        def create_account(handle: str, password: str) -> str:
            return client.create_account(handle, password, f"{handle}@example.com")

        db = world.db()
        seed_dataset(db, world.media_root, create_account, size="bench")
        heavy = db["users"].find_one({"atproto.handle": HEAVY})
        with FaultProxy(limited.url) as proxy:  # forwards everything; counts the PDS's answers
            monkeypatch.setenv("PDS_URL", proxy.url)
            results = sync(world, [HEAVY], full=False)
        client.close()
    deferred = {media: r for (_, media), r in results.items() if r.deferred}
    assert deferred and all(r.ok for r in results.values()), [r.row() for r in results.values()]
    created = sum(r.outcome.created for r in results.values())
    points = 3 * created
    assert points <= 5000 < 3 * sum(r.outcome.desired for r in results.values())
    # One 429: after it, the account's writes wait, its other partitions defer without asking again.
    refused = proxy.answered[("com.atproto.repo.applyWrites", 429)]
    assert refused == 1 and sum(n for (_, status), n in proxy.answered.items() if status == 429) == 1
    for (_, media), result in results.items():  # what was written is linked
        collection = db[MEDIA[media].collection]
        linked = collection.count_documents({"user": heavy["_id"], "atproto.rkey": {"$exists": True}})
        assert linked == result.outcome.created, (media, linked)
    until = max(r.outcome.deferred_until for r in deferred.values())
    print(
        f"\nFIGURES reference PDS with its rate limits on: heavy user {created} records created "
        f"({points} of 5,000 points), {refused} 429s, {len(deferred)} partitions deferred until {until}"
    )
