"""The platform bench's stage: a fresh world in a temporary folder, the proxies in front of it, the dataset.

- One fresh local reference PDS, the demo media server, and a fresh ACPIPELINE_HOME and DAGSTER_HOME (a
  copy of the repo's `dagster.yaml`: its run queue and its pool `pds_writes`) in a temporary folder. The
  dataset is seeded as `acpipeline demo --seed-only` does it (`acpipeline.demo.environment.seed`: the
  accounts are created on the PDS and their sessions saved under ACPIPELINE_HOME, so the sync does not log
  in). Every handle with an account is registered as a dynamic partition in one call.
- The network (`rtt_ms`, `bandwidth_mbit`): two proxies (`platform_requests.TallyingProxy`), one in front
  of the PDS and one in front of the media storage, put that network between the servers' runs and both
  (half the round trip each way, one more for a new connection, the bandwidth shared per direction);
  without it, the proxies are there all the same, at zero delay, and count. The servers get `PDS_URL` and
  the storage URL templates pointing at the proxies. The seeding is given the storage proxy's oven bucket
  too, so the tapes' `mp4Url` lie under a storage root the runs know (a document's URL must, or the oven's
  MP4 is refused). The seeding, the reading after the full pass, the ceiling and the derivation alone do
  not go through the network: the derivation fetches the oven's objects through the storage proxy set to
  zero delay, the rest directly.
- With the PDS's limits on, the PDS has a bypass key and the seeding uses it: the platform's accounts are
  over createAccount's limit (and its requests would otherwise spend the first pass's window); the reading
  after the full pass and the ceiling use it too (they are not the pipeline)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acpipeline.bench.platform_requests import TallyingProxy, _probe_limits
from acpipeline.bench.processes import PROJECT
from acpipeline.bench.servers import CELERY, BenchError
from acpipeline.core.media import MEDIA_NAMES
from acpipeline.resources.pds.transport import RATELIMIT_BYPASS_ENV

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from acpipeline.demo.dataset import DatasetSummary
    from acpipeline.demo.environment import DemoEnvironment
    from acpipeline.resources.mongo import MongoDatabase

BROKER_ENV = "ACPIPELINE_CELERY_BROKER_URL"  # deploy/celery/run_launcher.yaml reads it


@dataclass(frozen=True)
class BenchOptions:
    """What one run of the bench was asked for (see `run_platform_bench`)."""

    size: str
    layout: str
    launcher: str
    pds_limits: str
    rtt_ms: float
    bandwidth_mbit: float | None
    extra_env: dict[str, str]
    bypass_key: str | None  # with the PDS's limits on: the seeding's, and `bypass` mode's

    @property
    def limited(self) -> bool:
        return self.pds_limits != "off"


def work_folder(launcher: str) -> Path:
    """A fresh temporary folder holding the bench's DAGSTER_HOME: a copy of the repo's `dagster.yaml`, with
    deploy/celery/'s run launcher added for the `celery` launcher."""
    work = Path(tempfile.mkdtemp(prefix="acpipeline-bench-platform-"))
    dagster_home = work / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(PROJECT / "dagster.yaml", dagster_home / "dagster.yaml")
    if launcher == "celery":
        with open(dagster_home / "dagster.yaml", "a") as instance_file:
            instance_file.write("\n" + (CELERY / "run_launcher.yaml").read_text())
    return work


def isolate_environment(work: Path) -> dict[str, str]:
    """This process's environment pointed at the homes in `work`, with automation stopped; returns the
    environment it replaced."""
    saved = dict(os.environ)
    for name in ("MONGODB_CONNECTION_STRING", "PDS_URL", "PDS_ADMIN_PASSWORD", RATELIMIT_BYPASS_ENV):
        os.environ.pop(name, None)  # never a real database or PDS, nor an operator's bypass key
    os.environ.update(
        ACPIPELINE_HOME=str(work / "home"),
        DAGSTER_HOME=str(work / "dagster_home"),
        ACPIPELINE_AUTOMATION="stopped",
    )
    return saved


@dataclass(frozen=True)
class Stage:
    """What the servers' runs sync against: the PDS and the media server, the proxies in front of them,
    and the embedded store."""

    world: DemoEnvironment
    probe: dict[str, Any]  # the PDS's rate limits as probed before the seeding
    pds_proxy: TallyingProxy
    storage_proxy: TallyingProxy
    through_proxy: dict[str, str]  # the storage URL templates' variables, through the storage proxy
    db: MongoDatabase

    @property
    def pds_url(self) -> str:
        return self.world.pds_url

    @property
    def pds_pid(self) -> int | None:
        return self.world.local_pds.process.pid if self.world.local_pds is not None else None


def start_stage(stack: ExitStack, work: Path, options: BenchOptions, log: Callable[[str], None]) -> Stage:
    """The PDS (with its rate limits as `options` say), the media server, the Redis broker for the `celery`
    launcher, the proxies and the store, each closed by `stack`."""
    from acpipeline.demo.environment import TEMPLATE_ENV, start_environment
    from acpipeline.resources.mongo import MongoResource

    limited, bypass_key = options.limited, options.bypass_key
    world = start_environment(work / "media", log=log, rate_limits=limited, rate_limit_bypass_key=bypass_key)
    stack.callback(world.close)
    if options.launcher == "celery":
        from acpipeline.bench.redis import start_redis

        redis = start_redis()
        stack.callback(redis.stop)
        os.environ[BROKER_ENV] = redis.url
    probe = _probe_limits(world.pds_url, bypass_key)
    if limited and not probe["limited"]:
        raise BenchError(f"the PDS was started with its rate limits on, but applies none: {probe}")
    pds_proxy = TallyingProxy(world.pds_url, options.rtt_ms, options.bandwidth_mbit, name="pds")
    storage_proxy = TallyingProxy(world.media.url, options.rtt_ms, options.bandwidth_mbit, name="storage")
    for proxy in (pds_proxy, storage_proxy):
        proxy.start()
        stack.callback(proxy.stop)
    through_proxy = {
        TEMPLATE_ENV[name]: template.replace(world.media.url, storage_proxy.url)
        for name, template in world.media.url_templates().items()
    }
    # The oven's objects (tapes' `mp4Url`) through the storage proxy from the seeding on: a document's URL
    # must lie under a storage root the runs know. The rest of this process reaches storage directly (the
    # derivation alone).
    blobs_env = TEMPLATE_ENV["blobs_url"]
    os.environ[blobs_env] = through_proxy[blobs_env]
    mongo = MongoResource()
    stack.callback(mongo.close)
    return Stage(world, probe, pds_proxy, storage_proxy, through_proxy, mongo.db())


@dataclass(frozen=True)
class Seeded:
    """The dataset seeded into the stage, its handles registered as partitions."""

    summary: DatasetSummary
    seed_s: float
    instance: DagsterInstance
    order: list[str]  # the registered handles, in the instance's order
    keys: list[str]  # every partition key `handle|media`
    dataset: dict[str, Any]  # the result's `dataset`


def seed_stage(stack: ExitStack, stage: Stage, options: BenchOptions, log: Callable[[str], None]) -> Seeded:
    """Seed the dataset of `options.size` (past the PDS's limits with the bypass key, when they are on) and
    register its handles in the instance, which `stack` closes."""
    from dagster import DagsterInstance

    from acpipeline.demo.environment import seed
    from acpipeline.sync.partitions import handle_partitions, partition_key, register_handles

    size, bypass_key = options.size, options.bypass_key
    log(
        f"seeding the {size} dataset ..."
        + (" (with the PDS's bypass key: its limits are on)" if bypass_key else "")
    )
    seeded = time.perf_counter()
    if bypass_key:
        os.environ[RATELIMIT_BYPASS_ENV] = bypass_key
    try:
        summary = seed(stage.pds_url, stage.world.media.media_root, stage.db, size=size, log=log)
    finally:
        os.environ.pop(RATELIMIT_BYPASS_ENV, None)
    seed_s = time.perf_counter() - seeded
    instance = stack.enter_context(DagsterInstance.get())
    register_handles(instance, stage.db)
    assert handle_partitions.name is not None
    order = list(instance.get_dynamic_partitions(handle_partitions.name))
    keys = [partition_key(handle, media) for handle in order for media in MEDIA_NAMES]
    dataset = _dataset(summary, order)
    log(
        f"seeded in {seed_s:.0f} s: {dataset['users']} users, {dataset['accounts']} accounts, "
        f"{dataset['records_expected_total']} records expected; {len(keys)} partitions"
    )
    return Seeded(summary, seed_s, instance, order, keys, dataset)


def _dataset(summary: DatasetSummary, order: list[str]) -> dict[str, Any]:
    counts = summary.counts
    with_account = summary.items_per_user.get("with_account", {}).get("items", {})
    people = summary.items_per_user.get("all", {}).get("items", {}).get("users")
    return {
        "size": summary.size,
        "users": people if people is not None else counts.get("users", 0),  # the art account not counted
        "accounts": len(order),  # registered handles: the users with an account, the art account included
        "documents": {
            name: counts.get(name, 0) for name in ("paintings", "moods", "pieces", "kidlisp", "tapes")
        },
        "records_expected": dict(summary.records_expected),
        "records_expected_total": summary.records_expected_total,
        "records_on_pds_total": summary.records_on_pds_total,  # with the platform's orphan KidLisp records
        "items_per_account": with_account,
    }
