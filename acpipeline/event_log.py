"""Dagster's SQLite event log, with its connections kept and a range run's materializations stored at once.

Dagster's `SqliteEventLogStorage` creates an engine, opens a connection and disposes of both for every
statement of every event: several connections and a fresh SQL compilation per event. A range run writes
about four events per partition, so that plumbing was most of a no-op run's time (the README's benchmark
has the figures). This subclass changes only that plumbing:
- one engine per shard file, kept (the index shard, and the last few run shards), so connections and
  compiled statements are reused: a third of the time per event;
- a new run's shard copied from a template file (Dagster's own schema, made once per Dagster version by its
  own `_initdb`) instead of building its tables and stamping its migration again for every run;
- `store_event_batch`, which Dagster calls for the materializations of a range output when
  `DAGSTER_EVENT_BATCH_SIZE` is set (`acpipeline.settings.DAGSTER_ENV`), and the record stage for its
  partitions' materializations and check evaluations (`dagster_compat.log_as_batch`): one transaction per
  shard for the whole batch instead of two or three per event.

The files, tables and rows are Dagster's own, in Dagster's own place for the instance: an instance can
switch between this class and Dagster's in either direction. Unless `base_dir` is configured, the files are
`<the instance's root>/history/runs`, where Dagster's default event log keeps them: `$DAGSTER_HOME` for
`DagsterInstance.get()`, and the temporary folder Dagster's CLI makes when `DAGSTER_HOME` is not set
(`dagster dev`, `dagster definitions validate` in the checkout; its webserver, daemon, code servers and runs
open the instance from its serialized ref, which names that folder). A process that opens the instance also
gets Dagster's settings for range runs (`acpipeline.settings.apply_dagster_env`), since Dagster reads them
from the environment of whichever process creates a run or stores its events. Production runs on Postgres
(see the README), where none of this applies."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import DagsterInstance, Field, StringSource
from dagster import __version__ as DAGSTER_VERSION
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import _event_logs_directory
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine, Row

from acpipeline.settings import apply_dagster_env

# Run shards whose engines stay open besides the index: a process writes one run's events at a time (the
# CLI's workers each their own), and the webserver reads a few runs' logs at once.
RUN_SHARDS_KEPT = 8
ASSET_TYPES = {DagsterEventType.ASSET_MATERIALIZATION.value, DagsterEventType.ASSET_OBSERVATION.value}
CHECK_TYPE = DagsterEventType.ASSET_CHECK_EVALUATION.value
_OPEN: weakref.WeakSet[PooledSqliteEventLogStorage] = weakref.WeakSet()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` with kept connections and single-transaction batches (see the module)."""

    batches_check_evaluations = True  # `store_event_batch` takes them (Dagster's own storages do not)

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()
        self._inst_data = inst_data
        self._db_lock = threading.Lock()
        self._in_transaction = threading.local()  # .shards: shard -> this thread's open connection to it
        if base_dir:
            super().__init__(base_dir, inst_data)
        # else: Dagster's default place for the instance this storage belongs to, once it registers
        _OPEN.add(self)

    def register_instance(self, instance: DagsterInstance) -> None:
        """Called as the instance opens (before anything reads or writes events): the files go where
        Dagster's own event log would keep them for this instance, unless `base_dir` was configured."""
        if not self.has_base_dir:
            base_dir = _event_logs_directory(instance.root_directory)  # <root>/history/runs, as Dagster
            SqliteEventLogStorage.__init__(self, base_dir, self._inst_data)
        super().register_instance(instance)
        apply_dagster_env()  # this process creates runs or stores their events: Dagster reads them here

    @property
    def has_base_dir(self) -> bool:
        """False until the instance registers when `base_dir` was not configured."""
        return hasattr(self, "_base_dir")

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            pool_size=1,
            max_overflow=2,
        )
        self._engines[shard] = engine
        run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for name in run_shards[: max(0, len(run_shards) - RUN_SHARDS_KEPT)]:
            self._engines.pop(name).dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's own `_connect`, with a kept engine instead of a new one per statement. Inside a
        # transaction of this thread on the same shard (a batch calling Dagster's per-event writers), the
        # statements join that transaction: a second connection would wait on the first one's lock.
        shards: dict[str, Connection] = self._in_transaction.__dict__.setdefault("shards", {})
        if shard in shards:
            yield shards[shard]
            return
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                if shard == INDEX_SHARD_NAME or not self._shard_from_template(shard):
                    self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                shards[shard] = conn
                try:
                    yield conn
                finally:
                    del shards[shard]

    def _shard_from_template(self, shard: str) -> bool:
        """Create a run's shard that does not exist yet as a copy of the template: Dagster's `_initdb` builds
        and stamps a new shard with a dozen statements and an Alembic revision check, for every run. False
        when the shard exists (another process made it first): Dagster's own checks take over."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        staged = f"{path}.{os.getpid()}-{threading.get_ident()}.staged"
        shutil.copyfile(self._template(), staged)
        try:
            os.link(staged, path)  # created only if still absent: never over a shard someone else made
        except OSError:
            return False
        finally:
            os.unlink(staged)
        return True

    def _template(self) -> str:
        """An empty run shard as Dagster's `_initdb` makes it, once per Dagster version. A dot file: Dagster
        lists run shards as `*.db`, which does not match it."""
        name = f".run-shard-template-{DAGSTER_VERSION}"
        path = os.path.join(self._base_dir, f"{name}.db")
        if not os.path.exists(path):
            staged = f"{name}-{os.getpid()}-{threading.get_ident()}"
            engine = create_engine(create_db_conn_string(self._base_dir, staged))
            try:
                self._initdb(engine)
            finally:
                engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
            os.replace(os.path.join(self._base_dir, f"{staged}.db"), path)
        return path

    def has_table(self, table_name: str) -> bool:
        # Asked for every tagged asset event; a table, once there, stays.
        if table_name not in self._tables and super().has_table(table_name):
            self._tables.add(table_name)
        return table_name in self._tables

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Materializations, observations and check evaluations of one run: one transaction in the run's
        shard, then one in the index, with the same rows Dagster's `store_event` writes one event at a
        time. Anything else goes event by event, as in Dagster."""
        run_ids = {event.run_id for event in events}
        if len(run_ids) != 1 or not all(_batchable(event) for event in events):
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]
        insert = SqlEventLogStorageTable.insert()
        with self.run_connection(run_ids.pop()) as conn:
            conn.execute(insert, rows)
        with self.index_transaction() as conn:
            ids = [_inserted_id(conn.execute(insert, row).inserted_primary_key) for row in rows]
            stored = list(zip(events, ids, strict=True))
            asset_events = [(event, event_id) for event, event_id in stored if _type(event) in ASSET_TYPES]
            if asset_events:
                self._store_asset_event_tags(conn, [e for e, _ in asset_events], [i for _, i in asset_events])
            # An asset's row keeps its latest event of each kind, each event overwriting the one before: the
            # batch's last one of each kind leaves the row as all of them one by one would.
            latest = {(_type(event), _asset(event)): (event, event_id) for event, event_id in asset_events}
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)
            for event, event_id in stored:
                if _type(event) == CHECK_TYPE:
                    self.store_asset_check_event(event, event_id)  # joins this transaction (`_connect`)

    def wipe(self) -> None:
        with self._db_lock:
            self._dispose_engines()
        super().wipe()

    def dispose(self) -> None:
        with self._db_lock:
            self._dispose_engines()
        if self.has_base_dir:  # an unopened storage started no watcher
            super().dispose()

    def _dispose_engines(self) -> None:
        while self._engines:
            self._engines.popitem()[1].dispose()

    def _forget_engines(self) -> None:
        for engine in self._engines.values():
            engine.dispose(close=False)  # the parent's connections stay the parent's
        self._engines = OrderedDict()
        self._db_lock = threading.Lock()
        self._in_transaction = threading.local()


def _inserted_id(primary_key: Row[Any] | None) -> int:
    """The id of the event row one insert made (SQLAlchemy's `inserted_primary_key`: None only for an
    insert of many rows at once)."""
    if primary_key is None:
        raise RuntimeError("the event log's index gave no id for an inserted event")
    event_id: int = primary_key[0]
    return event_id


def _type(event: EventLogEntry) -> str | None:
    return event.dagster_event.event_type_value if event.dagster_event else None


def _asset(event: EventLogEntry) -> str:
    dagster_event = event.dagster_event
    return dagster_event.asset_key.to_string() if dagster_event and dagster_event.asset_key else ""


def _batchable(event: EventLogEntry) -> bool:
    kind = _type(event)
    return bool(event.run_id) and (kind == CHECK_TYPE or (kind in ASSET_TYPES and bool(_asset(event))))


def _forget_all_engines() -> None:
    for storage in list(_OPEN):
        storage._forget_engines()


# A forked child (the CLI's workers) must not use its parent's SQLite connections.
os.register_at_fork(after_in_child=_forget_all_engines)
