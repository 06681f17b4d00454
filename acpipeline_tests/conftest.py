"""Fixtures: one real reference PDS and one real PostgreSQL server per test session (started when a test
asks for them), and per test a fresh embedded store, media server, ACPIPELINE_HOME and Dagster instance."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance

from acpipeline.demo.media_server import MediaServer
from acpipeline.localpds import server as localpds
from acpipeline.resources.pds import PdsClient
from acpipeline.settings import apply_dagster_env

from .postgres import PgCluster, start_cluster

# The tests create runs in this process on an ephemeral instance, as the CLI does on its own: Dagster's
# settings for range runs are in its environment from the start, as `acpipeline.cli.main` puts them there.
# (Importing the code location no longer does; every process that opens the project's instance does.)
apply_dagster_env()

_accounts = itertools.count()

# Tests that need a real server (the reference PDS, PostgreSQL, or the Dagster services and their own PDS)
# are `integration`; the rest are `unit` (seconds in all): `make test-fast` runs those.
SERVER_FIXTURES = {"pds_url", "world", "postgres", "limited", "redis"}
SERVER_MODULES = {
    "test_bench_platform",
    "test_bench_platform_celery",
    "test_bench_platform_dev",
    "test_dagster_cli",
    "test_demo_world",
    "test_deploy",
    "test_ui",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: needs no server; part of `make test-fast`")
    config.addinivalue_line(
        "markers", "integration: runs against a real PDS, PostgreSQL or Dagster's services"
    )


# The modules that take a minute or more in `make test`, in the order they start (the rest follow in
# collection order): pytest-xdist's `--dist loadfile` hands out modules in this order, two to a worker at
# first, so the suite ends with short modules on every worker instead of a long one alone. The first few
# that mostly wait (on the backfill daemon's 30 s cadence) start beside those that keep the cores busy.
FIRST_MODULES = (
    "test_reliability",  # computes
    "test_cli",  # computes
    "test_bench_platform_dev",  # waits
    "test_bench_platform",  # waits
    "test_bench_platform_celery",  # waits
    "test_ui",  # waits
    "test_deploy",  # waits
    "test_celery_deploy",  # waits
    "test_dataset",
    "test_demo_world",
    "test_doctor",
    "test_bench_rtt",
    "test_kill_inside",
    "test_dagster_cli",
    "test_pds_limits",
    "test_bench_smoke",
    "test_operations",
    "test_rate_limits",
)


def _module_name(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    return module.__name__.rpartition(".")[2] if module else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs_server = _module_name(item) in SERVER_MODULES or bool(
            SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        )
        item.add_marker(pytest.mark.integration if needs_server else pytest.mark.unit)
    rank = {name: i for i, name in enumerate(FIRST_MODULES)}
    items.sort(key=lambda item: rank.get(_module_name(item), len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def pds_url():
    """The real reference PDS on a free port, stopped by its pid at the end of the session."""
    pds = localpds.start(log=lambda *_: None)
    yield pds.url
    pds.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A real PostgreSQL server on a free port, in a temporary data directory, stopped by its pid at the end
    of the session. Each test creates its own database in it."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@dataclass
class World:
    pds_url: str
    home: Path
    media_root: Path
    media: MediaServer
    client: PdsClient
    instance: DagsterInstance

    def defs(self):
        from acpipeline.definitions import build_definitions

        return build_definitions()

    def db(self):
        return self.defs().resources["mongo"].db()

    def new_account(self, name: str) -> tuple[str, str, str]:
        """A fresh PDS account: (handle as MongoDB names it, did, password)."""
        handle = f"{name}{next(_accounts)}{secrets.token_hex(2)}.at.aesthetic.computer"
        password = secrets.token_urlsafe(16)
        did = self.client.create_account(handle, password, f"{handle}@example.com")
        return handle, did, password

    def create_account_unique(self, handle: str, password: str) -> str:
        """For the dataset generator: the same handles in MongoDB, unique accounts on the shared PDS."""
        name = handle.split(".")[0][:8]
        unique = f"{name}{next(_accounts)}{secrets.token_hex(2)}.at.aesthetic.computer"
        return self.client.create_account(unique, password, f"{unique}@example.com")


@pytest.fixture
def world(pds_url, tmp_path, monkeypatch) -> World:
    home = tmp_path / "home"
    monkeypatch.setenv("ACPIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("PDS_URL", pds_url)
    monkeypatch.delenv("MONGODB_CONNECTION_STRING", raising=False)
    media_root = tmp_path / "media"
    media_root.mkdir()
    media = MediaServer(media_root).start()
    for name, template in media.url_templates().items():
        monkeypatch.setenv(f"ACPIPELINE_{name.upper()}", template)
    client = PdsClient(pds_url)
    instance = DagsterInstance.ephemeral()
    yield World(pds_url, home, media_root, media, client, instance)
    client.close()
    media.stop()
    os.environ.pop("ACPIPELINE_HOME", None)
