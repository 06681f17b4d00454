"""Wipe: delete one account's `computer.aesthetic.*` records from the PDS and clear MongoDB's links to them.

Only the selected collections of that one account are listed and deleted (in applyWrites batches); no other
collection, no other account. Restoring is a sync of the account (`acpipeline sync --handle H`, or a
materialization/backfill of its partitions in the UI).

How a wipe shows in the UI: Dagster 1.13 (OSS) cannot un-materialize a partition (`wipe_asset_partitions`
is not implemented for SQL event logs) and marks a partition "failed" only from a failed run that planned it;
a runless `AssetMaterialization` would even make the partition look freshly synced. So a wipe records, per
affected `atproto_records` partition, two events in the wipe's own run:

- an `AssetObservation` with `wiped: true`, `records_deleted`, `on_pds: 0` and the restore command, which
  shows in the partition's event history next to its materializations; and
- a failed evaluation of the asset's check `pds_holds_desired_records` (severity ERROR; it passes only when
  MongoDB wants no record there), which is true (the PDS no longer holds the desired records), turns the
  asset's check status red until the partition is synced again, and is replaced by the next sync's
  evaluation.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetObservation,
    Config,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    job,
    op,
)
from pydantic import Field

from acpipeline.core.batches import batch_writes, encode_body, write_op
from acpipeline.core.link_fields import has_link, link_unset
from acpipeline.core.media import MEDIA, MEDIA_NAMES, MediaRules
from acpipeline.core.plan import Write
from acpipeline.errors import OperatorError
from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.pds import PdsClient, PdsError, PdsResource, Session, TransientWriteError
from acpipeline.sync.assets import POOL, atproto_records
from acpipeline.sync.extract import Account, extract_items, find_account, owner_filter
from acpipeline.sync.partition_sync import CHECK
from acpipeline.sync.partitions import partition_key, register_handles

WIPE_JOB_NAME = "wipe_account"
WIPE_OP_NAME = "wipe_records"
MAX_ROUNDS = 4  # listings per collection: a batch whose outcome is unknown is never retried blind


@dataclass
class CollectionWipe:
    """What a wipe found and did in one collection of one account."""

    media: str
    nsid: str
    on_pds: int = 0  # records listed before the wipe
    deleted: int = 0
    commits: int = 0
    linked: int = 0  # MongoDB documents carrying link fields before the wipe
    links_cleared: int = 0
    desired: int = 0  # items MongoDB wants synced (what a restore would create)
    seen: set[str] = field(default_factory=set, repr=False)  # rkeys listed during the wipe

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("seen")
        return data


def link_filter(rules: MediaRules, owner: str | None) -> dict[str, Any] | None:
    """The owner's documents that carry any link field; None when the owner can have no such documents."""
    if owner is None and not rules.may_be_anonymous:
        return None
    return {**owner_filter(owner), **has_link(rules.mirrors_link)}


class AccountWipe:
    """One account's wipe, usable without Dagster (the op below wraps it)."""

    def __init__(
        self,
        client: PdsClient,
        db: MongoDatabase,
        account: Account,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.client, self.db, self.account = client, db, account
        self.log = log or (lambda message: None)
        self._session: Session | None = None

    def session(self) -> Session:
        # Log in only when there is something to delete: dry runs and empty wipes never do.
        if self._session is None:
            self._session = self.client.session(self.account.did, self.account.password)
        return self._session

    def run(self, media: list[str], dry_run: bool) -> list[CollectionWipe]:
        return [self.collection(MEDIA[name], dry_run) for name in media]

    def collection(self, rules: MediaRules, dry_run: bool) -> CollectionWipe:
        report = CollectionWipe(rules.name, rules.nsid)
        items = extract_items(self.db, rules, self.account.owner)
        report.desired = sum(1 for i in items if i.wanted and i.problem is None)
        links = link_filter(rules, self.account.owner)
        report.linked = self.db[rules.collection].count_documents(links) if links else 0
        rkeys = self._rkeys(rules.nsid)
        report.on_pds = len(rkeys)
        if dry_run:
            return report
        self._delete_all(rules.nsid, report, rkeys)
        if links and report.linked:
            result = self.db[rules.collection].update_many(links, link_unset(rules.mirrors_link))
            report.links_cleared = result.modified_count
        self.log(
            f"{rules.nsid}: {report.deleted} records deleted in {report.commits} commits; links cleared on "
            f"{report.links_cleared} MongoDB documents"
        )
        return report

    def _rkeys(self, nsid: str) -> list[str]:
        return [r["uri"].rsplit("/", 1)[-1] for r in self.client.list_records(self.account.did, nsid)]

    def _delete_all(self, nsid: str, report: CollectionWipe, rkeys: list[str]) -> None:
        """Delete every listed record in batches; after a batch with an unknown outcome, list again (a delete
        of a record that is already gone would fail its whole batch)."""
        for attempt in range(MAX_ROUNDS):
            if not rkeys:
                break
            report.seen.update(rkeys)
            writes = [Write("delete", rkey, "wipe") for rkey in rkeys]
            try:
                for batch in batch_writes(nsid, writes):
                    body = {"repo": self.account.did, "writes": [write_op(nsid, w) for w in batch]}
                    self.client.apply_writes(self.session(), encode_body(body))
                    report.commits += 1
            except TransientWriteError as exc:
                self.log(f"{nsid}: {exc}; listing again")
                time.sleep(1.0 + attempt)
            rkeys = self._rkeys(nsid)
        if rkeys:
            raise PdsError(f"{len(rkeys)} records of {nsid} remain after {MAX_ROUNDS} rounds of deletes")
        report.deleted = len(report.seen)


class WipeConfig(Config):
    """Which account and collections a wipe deletes; a real wipe needs `confirm_handle` to repeat the
    handle."""

    handle: str = Field(description="The account's PDS handle, e.g. jeffrey.at.aesthetic.computer.")
    media: list[str] = Field(
        default=list(MEDIA_NAMES),
        description="Media types whose collections are wiped (default: all six).",
    )
    dry_run: bool = Field(default=False, description="Only count what would be deleted.")
    confirm_handle: str = Field(
        default="", description="Must repeat `handle` exactly, or a wipe (not a dry run) is refused."
    )


def _check_config(config: WipeConfig) -> None:
    unknown = [m for m in config.media if m not in MEDIA]
    if unknown:
        raise Failure(f"unknown media {', '.join(unknown)}: choose from {', '.join(MEDIA_NAMES)}")
    if not config.media:
        raise Failure("no media selected")
    if not config.dry_run and config.confirm_handle != config.handle:
        raise Failure(
            f"refusing to wipe {config.handle}: set confirm_handle to the same handle to confirm "
            "(or dry_run: true to only count)"
        )


def _table(rows: list[CollectionWipe]) -> MetadataValue:
    columns = ["media", "nsid", "on_pds", "deleted", "commits", "linked", "links_cleared", "desired"]
    return MetadataValue.table(
        records=[TableRecord({c: r.row()[c] for c in columns}) for r in rows],
        schema=TableSchema(
            columns=[TableColumn(c, "string" if c in ("media", "nsid") else "int") for c in columns]
        ),
    )


@op(
    name=WIPE_OP_NAME,
    pool=POOL,  # it writes to the PDS: counted with the record stage's writers
    out=Out(dict, description="Per collection: records found, deleted, links cleared."),
    description="Delete the account's records in the selected computer.aesthetic.* collections and clear "
    "the MongoDB link fields of its items. Never touches another collection or account.",
)
def wipe_records(
    context: OpExecutionContext, config: WipeConfig, mongo: MongoResource, pds: PdsResource
) -> Output[dict[str, Any]]:
    """Raises Failure for a bad config or an unknown handle; after a real wipe, marks each affected partition
    wiped in the UI."""
    _check_config(config)
    db = mongo.db()
    register_handles(context.instance, db)
    account = find_account(db, config.handle)
    if account is None:
        raise Failure(
            f"no user in MongoDB has the ATProto handle {config.handle} (or its did/password is missing)"
        )
    media = [m for m in MEDIA_NAMES if m in set(config.media)]
    rows = AccountWipe(pds.client(), db, account, log=context.log.info).run(media, config.dry_run)
    if not config.dry_run:
        for row in rows:
            if row.deleted or row.links_cleared:
                _mark_wiped(context, config.handle, row)
    total = {
        "records_on_pds": sum(r.on_pds for r in rows),
        "records_deleted": sum(r.deleted for r in rows),
        "links_cleared": sum(r.links_cleared for r in rows),
    }
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(
        f"{config.handle}: {verb} {total['records_on_pds'] if config.dry_run else total['records_deleted']} "
        f"records in {len(rows)} collections"
    )
    value: dict[str, Any] = {"handle": config.handle, "did": account.did, "dry_run": config.dry_run, **total}
    value["collections"] = [r.row() for r in rows]
    metadata: dict[str, str | int | MetadataValue] = {
        "handle": config.handle,
        "did": account.did,
        "dry_run": config.dry_run,
        **total,
        "collections": _table(rows),
        "restore": MetadataValue.md(f"`acpipeline sync --handle {config.handle}`"),
    }
    return Output(value, metadata=metadata)


def _mark_wiped(context: OpExecutionContext, handle: str, row: CollectionWipe) -> None:
    key = partition_key(handle, row.media)
    metadata: dict[str, str | int] = {
        "wiped": True,
        "records_deleted": row.deleted,
        "links_cleared": row.links_cleared,
        "on_pds": 0,
        "desired": row.desired,
        "restore": f"acpipeline sync --handle {handle} --media {row.media}",
    }
    context.log_event(AssetObservation(asset_key=atproto_records.key, partition=key, metadata=metadata))
    context.log_event(
        AssetCheckEvaluation(  # type: ignore[arg-type]  # log_event takes it; Dagster's annotation omits it
            asset_key=atproto_records.key,
            check_name=CHECK.name,
            passed=row.desired == 0,
            severity=AssetCheckSeverity.ERROR,
            partition=key,
            description="Wiped: the PDS no longer holds this partition's records; sync it to restore.",
            metadata={**metadata, "missing": row.desired},
        )
    )


@job(
    name=WIPE_JOB_NAME,
    description="Wipe one account's computer.aesthetic.* records (config: handle, media, dry_run, "
    "confirm_handle). Restore by syncing the account's partitions.",
    tags={"acpipeline/operation": "wipe"},
)
def wipe_job() -> None:
    """Only wires the one op: Dagster calls this once, to build the job, never in a run."""
    wipe_records()


@dataclass
class WipeOutcome:
    """How a wipe run ended, for the command line: the op's output, or the error as one line, and the run's
    id."""

    ok: bool
    value: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_id: str = ""


def run_wipe(
    defs: Definitions,
    instance: DagsterInstance,
    handle: str,
    media: list[str] | None = None,
    dry_run: bool = False,
    confirm: bool = False,
) -> WipeOutcome:
    """Run the wipe job in this process, recorded in `instance` (the CLI's path)."""
    unknown = [m for m in media or [] if m not in MEDIA]
    if unknown:
        raise OperatorError(f"unknown media {', '.join(unknown)}: choose from {', '.join(MEDIA_NAMES)}")
    config = {"handle": handle, "media": media or list(MEDIA_NAMES), "dry_run": dry_run}
    if confirm:
        config["confirm_handle"] = handle
    result = defs.resolve_job_def(WIPE_JOB_NAME).execute_in_process(
        instance=instance,
        run_config={
            "ops": {WIPE_OP_NAME: {"config": config}},
            # The run's failure comes back as one line below; the terminal gets no stack trace of it.
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
        raise_on_error=False,
        tags={"acpipeline/cli": "wipe" if not dry_run else "wipe-dry-run"},
    )
    if result.success:
        return WipeOutcome(True, result.output_for_node(WIPE_OP_NAME), run_id=result.run_id)
    failure = next((e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE), None)
    info = failure.step_failure_data.error if failure else None
    error = "run failed"
    if info is not None:
        while info.cause is not None and (info.cls_name or "").startswith("Dagster"):
            info = info.cause  # Dagster's "Error occurred while executing op" wraps what went wrong
        error = info.message.strip().splitlines()[0]
        name, _, rest = error.partition(": ")
        error = rest if rest and name.endswith(info.cls_name or "\0") else error
    return WipeOutcome(False, error=error, run_id=result.run_id)
