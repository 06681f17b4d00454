"""The demo's world on one machine: the reference PDS (local unless `PDS_URL` is set), a media server for
the storage buckets, and the synthetic dataset in the embedded store. Tests use it too."""

from __future__ import annotations

import os
import secrets
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from acpipeline.demo.dataset import ACCOUNT_WORKERS, DatasetSummary, seed_dataset
from acpipeline.demo.media_server import MediaServer
from acpipeline.errors import OperatorError
from acpipeline.localpds.server import LocalPds
from acpipeline.localpds.server import start as start_pds
from acpipeline.resources.pds import PdsClient, PdsError
from acpipeline.settings import acpipeline_home

TEMPLATE_ENV = {
    "image_url": "ACPIPELINE_IMAGE_URL",
    "guest_image_url": "ACPIPELINE_GUEST_IMAGE_URL",
    "zip_url": "ACPIPELINE_ZIP_URL",
    "blobs_url": "ACPIPELINE_BLOBS_URL",
}


@dataclass
class DemoEnvironment:
    pds_url: str
    media: MediaServer
    local_pds: LocalPds | None
    stack: ExitStack

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> DemoEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_a_real_database() -> None:
    if os.environ.get("MONGODB_CONNECTION_STRING"):
        raise OperatorError(
            "MONGODB_CONNECTION_STRING is set: the demo only seeds the embedded store, never a real "
            "database. Unset it to run the demo."
        )


def start_environment(media_root: Path | None = None, log=print) -> DemoEnvironment:
    """Start (or reach) the PDS and start the media server; export their URLs into this process's
    environment, which is how the Dagster resources and child processes find them."""
    refuse_a_real_database()
    stack = ExitStack()
    try:
        local = None
        url = os.environ.get("PDS_URL")
        if not url:
            local = start_pds(log=log)
            stack.callback(local.stop)
            url = local.url
            os.environ["PDS_URL"] = url
            os.environ["PDS_ADMIN_PASSWORD"] = local.admin_password
        media = MediaServer(media_root or acpipeline_home() / "media").start()
        stack.callback(media.stop)
        for name, template in media.url_templates().items():
            os.environ[TEMPLATE_ENV[name]] = template
        return DemoEnvironment(url, media, local, stack)
    except BaseException:
        stack.close()
        raise


def create_demo_account(client: PdsClient, handle: str, password: str, email: str) -> str:
    """An account for a demo user; a PDS that refuses the handle's domain (an outside `PDS_URL`) is named
    in one line with what to change."""
    try:
        return client.create_account(handle, password, email)
    except PdsError as exc:
        if exc.error != "UnsupportedDomain":
            raise
        domain = "." + handle.split(".", 1)[1]
        raise OperatorError(
            f"the PDS at {client.url} does not accept handles under {domain}, where the demo creates its "
            "users: unset PDS_URL to use the demo's own PDS, or give that PDS "
            "PDS_SERVICE_HANDLE_DOMAINS=.at.aesthetic.computer,.pds.aesthetic.computer"
        ) from None


def seed(
    pds_url: str, media_root: Path, db, size: str = "small", seed_value: int = 7, log=print
) -> DatasetSummary:
    """Create the demo accounts on the PDS and fill the embedded store (replacing earlier demo data:
    a fresh local PDS has none of the old accounts).

    The accounts are created several at a time (ACCOUNT_WORKERS threads share this one client; each
    account's session is saved under ACPIPELINE_HOME/sessions, so the sync that follows does not log in
    again). The platform-size dataset reports its progress to `log` (about a thousand accounts take
    minutes); the small ones say nothing until the summary."""
    client = PdsClient(pds_url)
    run_tag = secrets.token_hex(3)

    def create_account(handle: str, password: str) -> str:
        return create_demo_account(client, handle, password, f"{handle.split('.')[0]}-{run_tag}@example.com")

    try:
        return seed_dataset(
            db,
            Path(media_root),
            create_account,
            size=size,
            seed=seed_value,
            reset=True,
            account_workers=ACCOUNT_WORKERS,
            progress=log if size == "platform" else None,
        )
    finally:
        client.close()
