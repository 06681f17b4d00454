"""Our writers of one account, in every process of this machine, commit one at a time (a lock file per
account under `ACPIPELINE_HOME/locks`): each builds on the commit the one before made, whose head the file
keeps, instead of failing its swapCommit and sending again."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def account_turn(locks: Path, did: str) -> Iterator[AccountTurn]:
    """Our writers of one account, in every process of this machine, commit one at a time: each builds
    on the commit the one before made, instead of failing its swapCommit and sending again. The turn
    carries the head the last of them made, so the next one need not ask the PDS for it."""
    locks.mkdir(exist_ok=True)
    name = hashlib.sha256(did.encode()).hexdigest()[:24]
    with open(locks / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lock.seek(0)
            yield AccountTurn(lock, _head_of(lock.read()))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _head_of(text: str) -> tuple[str, str] | None:
    """The (cid, rev) a turn file holds; None for an empty or torn one (the PDS is asked instead)."""
    parts = text.split()
    if len(parts) == 2 and parts[0].startswith("baf") and len(parts[1]) == 13:
        return parts[0], parts[1]
    return None


class AccountTurn:
    """One writer's turn at an account: `head`, the (cid, rev) our last commit to it made, if known. It may be
    stale (another tool wrote since): a swapCommit on it then fails unapplied, and the writer asks the PDS."""

    def __init__(self, lock: TextIO, head: tuple[str, str] | None) -> None:
        self._lock, self.head = lock, head

    def made(self, cid: str, rev: str) -> None:
        self.head = (cid, rev)
        self._write(f"{cid} {rev}\n")

    def forget(self) -> None:
        """A write whose outcome is unknown may have moved the head: the next writer asks the PDS."""
        self.head = None
        self._write("")

    def _write(self, text: str) -> None:
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(text)
        self._lock.flush()
