"""Where the state that runs share lives: on this machine (the default) or where every run reaches it.

Runs keep four kinds of state between them: the PDS sessions, the PDS's rate-limit throttle, the convergence
marks (`acpipeline.sync.converged`) and the derived-blob cache (`acpipeline.sync.cache`). By default the first
three are files under ACPIPELINE_HOME, shared by every process of one machine, which is also the fastest.
With a container run launcher every run starts with an empty ACPIPELINE_HOME, so:

- `ACPIPELINE_SHARED_STATE=mongodb` keeps sessions, throttle and marks in MongoDB, in collections of their
  own beside the platform's (`acpipeline-sessions`, `acpipeline-throttle`, `acpipeline-marks`), through the
  same connection settings as the sync (`MONGODB_CONNECTION_STRING`, `MONGODB_NAME`; unset: the embedded
  store). Session tokens go there and nowhere else: MongoDB already holds each account's password
  (`users.atproto.password`), while Dagster's storage (event log, run records) must never see a secret.
- `ACPIPELINE_CACHE_DIR` puts the derived-blob cache on a shared volume (see `acpipeline.sync.cache`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from acpipeline.errors import OperatorError
from acpipeline.settings import DEFAULT_DATABASE

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoCollection, MongoResource

SHARED_STATE_ENV = "ACPIPELINE_SHARED_STATE"
CACHE_DIR_ENV = "ACPIPELINE_CACHE_DIR"
SESSIONS = "acpipeline-sessions"
THROTTLE = "acpipeline-throttle"
MARKS = "acpipeline-marks"


def in_mongodb() -> bool:
    """Whether sessions, throttle and marks live in MongoDB (`ACPIPELINE_SHARED_STATE=mongodb`)."""
    value = (os.environ.get(SHARED_STATE_ENV) or "local").strip().lower()
    if value == "local":
        return False
    if value in ("mongodb", "mongo"):
        return True
    raise OperatorError(f"{SHARED_STATE_ENV}={value!r} is not a choice: set it to 'mongodb' or 'local'")


def cache_dir() -> Path | None:
    """The shared derived-blob cache (`ACPIPELINE_CACHE_DIR`), or None: the cache under ACPIPELINE_HOME."""
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value).resolve() if value else None


# One connection per process and setting; with the embedded store one per thread, since its SQLite
# connections belong to the thread that opened them. A forked child never uses (nor closes) its parent's:
# pymongo's clients and SQLite connections must not cross a fork.
_resources: dict[tuple[str, str], MongoResource] = {}  # (connection string, database)
_threads = threading.local()
_inherited: list[object] = []
_lock = threading.Lock()


def _forked() -> None:
    _inherited.extend(_resources.values())  # never used again, never closed
    _resources.clear()


os.register_at_fork(after_in_child=_forked)


def collection(name: str) -> MongoCollection:
    """One of our collections, in the MongoDB the sync reads (as `MONGODB_CONNECTION_STRING` and
    `MONGODB_NAME` say now)."""
    from acpipeline.resources.mongo import MongoResource, embedded_path

    connection_string = os.environ.get("MONGODB_CONNECTION_STRING") or None
    database = os.environ.get("MONGODB_NAME") or DEFAULT_DATABASE
    if connection_string is None:
        return _embedded(database, embedded_path(), name)
    with _lock:
        resource = _resources.get((connection_string, database))
        if resource is None:
            resource = _resources[(connection_string, database)] = MongoResource(
                connection_string=connection_string, database=database
            )
        return resource.db()[name]


class _Embedded:
    """This thread's connection to the embedded store, and the collections it has used."""

    def __init__(self, database: str) -> None:
        from acpipeline.resources.mongo import MongoResource

        self.resource = MongoResource(database=database)
        self.used: set[str] = set()


def _embedded(database: str, folder: str, name: str) -> MongoCollection:
    pid, mine = _thread_resources()
    if pid != os.getpid():  # a forked child: the parent's connections stay as they are
        _inherited.extend(mine.values())
        mine = {}
        _threads.resources = (os.getpid(), mine)
    embedded = mine.get((database, folder))
    if embedded is None:
        embedded = mine[(database, folder)] = _Embedded(database)
    found = embedded.resource.db()[name]
    if name not in embedded.used:
        _first_use(found, Path(folder))
        embedded.used.add(name)
    return found


def _thread_resources() -> tuple[int | None, dict[tuple[str, str], _Embedded]]:
    """(the process that opened them, this thread's embedded connections by (database, folder))."""
    pid: int | None
    mine: dict[tuple[str, str], _Embedded]
    pid, mine = getattr(_threads, "resources", (None, {}))
    return pid, mine


def _first_use(found: MongoCollection, folder: Path) -> None:
    """The embedded store opens a collection's file on its first use, and two connections doing so at once
    (threads or processes) may both try to record the file's format: one fails. First uses take turns."""
    folder.mkdir(parents=True, exist_ok=True)
    with _lock, open(folder / ".acpipeline-first-use.lock", "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            found.find_one({"_id": None}, {"_id": 1})
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)


def close() -> None:
    """Closes this process's connections, and this thread's (the next use opens them again)."""
    with _lock:
        resources = list(_resources.values())
        _resources.clear()
    pid, mine = _thread_resources()
    if pid == os.getpid():
        resources += [embedded.resource for embedded in mine.values()]
        mine.clear()
    for resource in resources:
        resource.close()
