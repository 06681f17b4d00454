"""The users' PDS accounts. They are created through an injected callable, so this package knows nothing
about the PDS client; every user, handle and password is decided first, then the accounts are created by a
few threads at once (the PDS hashes each password, a third of a second of its CPU) while the media files
are written by worker processes."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from acpipeline.demo.dataset.model import CreateAccount, DemoUser

ACCOUNT_WORKERS = 8  # createAccount calls at once (the platform found 10 concurrent creates stable)


@dataclass
class _PendingAccount:
    index: int  # in the builder's users
    doc: dict[str, Any]
    handle: str
    password: str
    flat: bool
    future: Future[str]


class AccountCreation:
    """The accounts being created in the background, and their users' documents waiting for the DIDs."""

    def __init__(self, create_account: CreateAccount, workers: int, say: Callable[[str], None]) -> None:
        self._create_account = create_account
        self.workers = max(1, workers)
        self._say = say
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[_PendingAccount] = []
        self._done = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, index: int, doc: dict[str, Any], handle: str, flat: bool) -> str:
        """Start creating the account of the user at `index` (whose document is `doc`); its password."""
        password = secrets.token_urlsafe(18)
        future = self._executor().submit(self._create_account, handle, password)
        future.add_done_callback(self._created)
        self._pending.append(_PendingAccount(index, doc, handle, password, flat, future))
        return password

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="create-account")
        return self._pool

    def _created(self, future: Future[str]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with self._lock:
            self._done += 1
            done = self._done
        if done % 100 == 0:
            self._say(f"  {done} accounts created")

    def finish(self, users: list[DemoUser]) -> None:
        """Wait for every account, then write each DID into its user's document and into `users`. The first
        failure cancels the accounts not yet started and is raised."""
        try:
            for pending in self._pending:
                did = pending.future.result()
                created = datetime.now(UTC).replace(tzinfo=None)
                created = created.replace(microsecond=created.microsecond // 1000 * 1000)
                if pending.flat:
                    pending.doc.update(
                        atproto_did=did, atproto_handle=pending.handle, atproto_password=pending.password
                    )
                else:
                    pending.doc["atproto"] = {
                        "did": did,
                        "handle": pending.handle,
                        "password": pending.password,
                        "createdAt": created,
                    }
                users[pending.index] = replace(users[pending.index], did=did)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the account threads (waiting for the calls in flight; the others are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
