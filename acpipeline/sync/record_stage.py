"""The record stage: the run's partitions converged on the PDS, accounts several at a time and an
account's partitions one after the other (`partition_sync.py`), their links written back in bulk before
their events are logged and their marks written; then the run's failed partitions named."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetExecutionContext,
    DagsterEvent,
    Failure,
    MetadataValue,
    Output,
)

from acpipeline.core.items import Derived
from acpipeline.dagster_compat import log_as_batch
from acpipeline.errors import OperatorError
from acpipeline.resources.mongo import MongoDatabase
from acpipeline.resources.pds import PdsClient
from acpipeline.settings import acpipeline_home
from acpipeline.sync.deferral import record_deferred
from acpipeline.sync.links import LinkWriter
from acpipeline.sync.marks import ConvergedState
from acpipeline.sync.partition_sync import (
    CHECK,
    PartitionSource,
    SyncConfig,
    SyncedPartition,
    proven_partition,
    sync_partition,
)
from acpipeline.sync.partitions import PARTITIONS_PER_RUN
from acpipeline.sync.repo_reads import RepoReads

# Accounts the record stage syncs at once: their partitions' round trips overlap. Each has one write in
# flight, so the PDS sees at most this many writers per step in the pool.
ACCOUNTS_AT_ONCE = 4


def converge(
    context: AssetExecutionContext,
    config: SyncConfig,
    source_items: dict[str, PartitionSource],
    media_blobs: dict[str, dict[str, Derived]],
    client: PdsClient,
    db: MongoDatabase,
    embedded: bool,
    failed: dict[str, str],
) -> Iterator[DagsterEvent]:
    """The run's partitions converged, their events logged as their links are written; a partition that
    fails goes into `failed` with why, and the others go on."""
    state = ConvergedState(acpipeline_home())
    # The partitions' MongoDB links are gathered and written a few thousand at a time (see sync/links.py);
    # a partition's events and convergence mark wait until its links are written. MongoDB is written from
    # this thread only (the embedded store's connections belong to their thread).
    links = LinkWriter(db, lock_dir=acpipeline_home() / "locks" if embedded else None)
    stores = _ThreadStores(client)
    waiting: list[SyncedPartition] = []
    deferred: dict[str, float] = {}  # partition -> until (epoch seconds)
    by_account: dict[str, list[PartitionSource]] = {}
    syncing = ThreadPoolExecutor(ACCOUNTS_AT_ONCE, thread_name_prefix="account-sync")
    try:
        for key, source in source_items.items():
            if source.account is None:
                failed[key] = f"no user in MongoDB has the ATProto handle {source.handle} any more"
            elif source.proof is not None:
                waiting.append(proven_partition(context, source, config.dry_run))
            else:
                by_account.setdefault(source.account.did, []).append(source)
        yield from _write_links_then_log(context, links, state, waiting)

        def sync_account(sources: list[PartitionSource]) -> list[tuple[str, SyncedPartition | str]]:
            """An account's partitions one after the other (its commits are a chain): each one's result, or
            why it failed; the others go on."""
            account_state, reads = stores.here()
            out: list[tuple[str, SyncedPartition | str]] = []
            for source in sources:
                try:
                    derived = media_blobs[source.key]
                    synced = sync_partition(context, config, reads, account_state, source, derived, links)
                except OperatorError:
                    raise
                except Exception as exc:  # this partition fails; the others of the run go on
                    out.append((source.key, f"{type(exc).__name__}: {exc}".splitlines()[0][:500]))
                else:
                    out.append((source.key, synced))
            return out

        # Accounts several at a time: a partition's few round trips to the PDS (its commits, any read it
        # needs) wait on the network, not on this process.
        for done in as_completed([syncing.submit(sync_account, sources) for sources in by_account.values()]):
            for key, result in done.result():
                if isinstance(result, str):
                    failed[key] = result
                    context.log.error(f"{key} failed: {result}")
                    continue
                for level, message in result.notes:
                    context.log.log(level, message)
                waiting.append(result)
                if result.deferred_until is not None:
                    deferred[key] = result.deferred_until
                if config.strict and result.items_failed:
                    failed[key] = f"{result.items_failed} items failed (strict mode)"
            if links.pending >= links.flush_at or len(waiting) >= PARTITIONS_PER_RUN:
                yield from _write_links_then_log(context, links, state, waiting)
        yield from _write_links_then_log(context, links, state, waiting)
    except BaseException:
        # The run fails (or is stopped): the partitions under way end, and what the PDS already holds still
        # gets linked, if MongoDB lets it; the original error is the one reported.
        syncing.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            links.flush()
        raise
    finally:
        syncing.shutdown(cancel_futures=True)
        state.close()
        stores.close()
        if deferred:
            record_deferred(context.instance, context.run.run_id, deferred)


def conclude(
    context: AssetExecutionContext, failed: dict[str, str], total: int
) -> Iterator[AssetCheckEvaluation | Output[None]]:
    """A failed check for each partition in `failed`, then the check's output; raises naming them."""
    for key, reason in failed.items():
        # Failed, visibly: the PDS is not known to hold the partition's records.
        yield AssetCheckEvaluation(
            asset_key=context.asset_key,
            check_name=CHECK.name,
            passed=False,
            partition=key,
            severity=AssetCheckSeverity.ERROR,
            metadata={"sync_failed": reason},
        )
    if not failed:
        # The per-partition check evaluations above stand for the check's output (as an AssetCheckResult's
        # output does): without it Dagster fails the step for a missing output.
        output = context.assets_def.get_output_name_for_asset_check_key(CHECK.key)
        if output in context.op_execution_context.selected_output_names:
            yield Output(None, output_name=output)
        return
    raise Failure(
        description=f"{len(failed)} of {total} partitions failed: "
        + "; ".join(f"{key}: {reason}" for key, reason in list(failed.items())[:20]),
        metadata={"failed_partitions": MetadataValue.json(failed)},
    )


class _ThreadStores:
    """A ConvergedState and RepoReads for each thread that syncs accounts: their SQLite connections serve
    one thread at a time (and the applyWrites thread of that thread's partition)."""

    def __init__(self, client: PdsClient) -> None:
        self._client = client
        self._here = threading.local()
        self._made: list[tuple[ConvergedState, RepoReads]] = []
        self._lock = threading.Lock()

    def here(self) -> tuple[ConvergedState, RepoReads]:
        made: tuple[ConvergedState, RepoReads] | None = getattr(self._here, "stores", None)
        if made is None:
            made = self._here.stores = (
                ConvergedState(acpipeline_home()),
                RepoReads(self._client, acpipeline_home()),
            )
            with self._lock:
                self._made.append(made)
        return made

    def close(self) -> None:
        with self._lock:
            for state, reads in self._made:
                state.close()
                reads.close()
            self._made.clear()


def _write_links_then_log(
    context: AssetExecutionContext, links: LinkWriter, state: ConvergedState, waiting: list[SyncedPartition]
) -> Iterator[DagsterEvent]:
    """Write the gathered links, then log the waiting partitions' events (one batch for the event log) and
    write their marks."""
    links.flush()
    if waiting:
        yield from log_as_batch(context, [event for synced in waiting for event in synced.events])
    for synced in waiting:
        if synced.mark:
            state.mark(*synced.mark)
    waiting.clear()
