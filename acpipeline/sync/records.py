"""The record stage: plan from the account's repository as the PDS holds it (`sync/repo_reads.py`), upload
missing blobs, applyWrites in batches, write the links back to MongoDB in bulk."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from acpipeline.core.batches import batch_writes, encode_body, write_op
from acpipeline.core.items import Derived, Item
from acpipeline.core.lexicon import load_lexicons
from acpipeline.core.link_fields import link_set, link_unset
from acpipeline.core.media import MediaRules
from acpipeline.core.plan import Existing, Plan, Write, build_desired, plan_writes
from acpipeline.resources.pds import PdsClient, PdsError, RateLimited, Session, TransientWriteError
from acpipeline.resources.pds.repo import RepoSnapshot
from acpipeline.settings import upload_concurrency
from acpipeline.sync.extract import Account
from acpipeline.sync.links import LinkWriter
from acpipeline.sync.outcome import SyncReport
from acpipeline.sync.pre_upload import PreUploaded, fresh
from acpipeline.sync.repo_reads import RepoReads, after_commit, existing_in, latest_commit

MAX_REPLANS = 3
MAX_SWAP_RETRIES = 30  # a batch our own concurrent runs kept beating to the account's next commit

OnCommit = Callable[[str, str], None]  # (the commit a write built on, the commit it made): revs


UPLOAD_BYTES_IN_FLIGHT = 64 * 1024 * 1024


def list_existing(client: PdsClient, did: str, nsid: str) -> list[Existing]:
    """Every record of one collection, listed page by page (listRecords), for `acpipeline status`; the sync
    reads whole repositories instead."""
    return [
        Existing(rkey=r["uri"].rsplit("/", 1)[-1], cid=r["cid"], value=r["value"])
        for r in client.list_records(did, nsid)
    ]


class RecordSync:
    """One partition's record stage: an account, a media type, its items and their derived blobs."""

    def __init__(
        self,
        client: PdsClient,
        rules: MediaRules,
        account: Account,
        items: list[Item],
        derived: dict[str, Derived],
        on_commit: OnCommit | None = None,
        turns: Callable[[], AbstractContextManager[Any]] = nullcontext,
        *,
        links: LinkWriter,
        reads: RepoReads,
        rev: str | None = None,
    ) -> None:
        """`links`: where the MongoDB link updates go, gathered with other partitions' by the caller, who
        flushes them before counting this partition done. `reads`: the account's repository; `rev`: its
        latest revision as the run saw it (a read kept at it serves the first plan)."""
        self.client, self.rules, self.account = client, rules, account
        self.on_commit, self.turns, self.links = on_commit, turns, links
        self.items = items
        self._by_ref = {item.ref: item for item in items}
        self.derived = derived
        self.lexicon = load_lexicons()[rules.nsid]
        self.desired, failed = build_desired(rules, items, derived, self.lexicon)
        self.report = SyncReport(
            account.handle, rules.name, account.did, desired=len(self.desired), failed=failed
        )
        self._blob_paths = {b.cid: b for d in derived.values() for b in d.blobs.values()}
        self._pre_uploaded = PreUploaded(derived, account.did)  # by the blob stage (sync/pre_upload.py)
        self._linked: set[str] = set()  # refs whose link was written back during the batches
        self._in_flight: list[Write] = []  # the batch sent last, until its answer came back
        self.reads, self._rev = reads, rev
        self._read_head: tuple[str, str] | None = None  # (cid, rev) of the commit the last plan read
        # The repository as the last plan read it, moved on by each of our commits while they chain from
        # that read (`after_commit`); None once one does not.
        self._after: RepoSnapshot | None = None

    def uri(self, rkey: str) -> str:
        return f"at://{self.account.did}/{self.rules.nsid}/{rkey}"

    def plan(self, fresh: bool = False) -> tuple[Plan, list[Existing]]:
        """From the repository at the run's revision (a kept read, or one now); `fresh`: read now."""
        did = self.account.did
        snapshot = self.reads.now(did) if fresh else self.reads.at(did, self._rev)
        self._read_head = (snapshot.commit_cid, snapshot.rev)
        self._after = snapshot
        existing = existing_in(snapshot, self.rules.nsid)
        plan = plan_writes(self.rules, self.desired, existing, self.items)
        self.report.not_in_mongodb = len(plan.not_in_mongodb)
        for write in plan.writes:
            if write.action == "create":
                self.lexicon.check_key(write.rkey)
        return plan, existing

    def state_after(self) -> RepoSnapshot | None:
        """The repository as this sync's writes left it, known without reading it again: the plan's read
        with each of our commits applied, when every commit built on the one before (swapCommit) and the
        PDS answered the CID of each value sent. None when the sync committed nothing (its read may be an
        earlier run's) or the chain broke."""
        return self._after if self.report.commits else None

    def run(self, dry_run: bool = False) -> SyncReport:
        try:
            return self._run(dry_run)
        except RateLimited as exc:  # before any write: the listing or the login
            self.report.deferred_until = exc.until
            return self.report

    def _run(self, dry_run: bool) -> SyncReport:
        plan, existing = self.plan()
        self.report.planned = [w.as_dict() for w in plan.writes]
        if dry_run:
            self._count(plan, applied=plan.writes)
            return self.report
        session: Session | None = None
        results: dict[str, tuple[str, str]] = {}  # rkey -> (uri, cid) of records written this run
        applied: list[Write] = []
        failures = 0  # applyWrites calls in a row whose outcome stayed unknown
        while True:
            done = len(applied)
            if not plan.writes:
                break
            # Logged in only when there is something to write: logins are rate-limited (30 per 5 minutes
            # per account) and most partitions of a nightly run are unchanged.
            session = session or self.client.session(self.account.did, self.account.password)
            try:
                self._apply(session, plan, existing, results, applied)
                break
            except RateLimited as exc:
                # What was written stays and is linked (`_apply` wrote its links); the rest waits for a run
                # after the PDS's window resets.
                self.report.deferred_until = exc.until
                break
            except TransientWriteError as exc:
                # The batch may or may not have applied: never retry it blind, plan again from the PDS.
                # Each batch that went through since the last failure resets the count, so a long run
                # survives scattered failures and gives up only when the PDS keeps failing.
                failures = 1 if len(applied) > done else failures + 1
                if failures > MAX_REPLANS:
                    raise TransientWriteError(
                        f"{failures} applyWrites calls in a row to {self.rules.nsid} of "
                        f"{self.account.handle} ended without a known outcome (last: {exc}); a new run "
                        "re-plans from the PDS",
                        exc.status,
                        exc.error,
                    ) from None
                self.report.replans += 1
                self.client.sleep(self.client.backoff(failures + 2))
                plan, existing = self.plan(fresh=True)
                self._settle(plan, existing, results, applied)
        self._count(plan, applied)
        self._write_back_final(plan, existing, results)
        return self.report

    def _settle(
        self,
        plan: Plan,
        existing: list[Existing],
        results: dict[str, tuple[str, str]],
        applied: list[Write],
    ) -> None:
        """After a re-plan, the writes of the batch whose outcome was unknown that the fresh listing shows
        applied: counted as applied and linked in MongoDB now."""
        batch, self._in_flight = self._in_flight, []
        listed = {r.rkey: r for r in existing}
        pending = {w.rkey for w in plan.writes}
        settled: list[Write] = []
        for write in batch:
            record = listed.get(write.rkey)
            if write.action == "delete":
                if record is None:
                    settled.append(write)
            elif record is not None and write.rkey not in pending and record.value == write.value:
                results[write.rkey] = (self.uri(write.rkey), record.cid)
                settled.append(write)
        applied.extend(settled)
        self._write_back(self._links_for(settled, results))

    def _count(self, plan: Plan, applied: list[Write]) -> None:
        self.report.created = sum(1 for w in applied if w.action == "create")
        self.report.updated = sum(1 for w in applied if w.action == "update")
        self.report.deleted = sum(1 for w in applied if w.action == "delete")
        pending = _not_applied(plan, applied)  # none, unless the PDS's rate limit deferred them
        if self.report.deferred_until is not None:
            self.report.deferred_writes = len(pending)
        written = self.report.created + self.report.updated
        self.report.unchanged = len(self.desired) - written - sum(w.action != "delete" for w in pending)

    def _apply(
        self,
        session: Session,
        plan: Plan,
        existing: list[Existing],
        results: dict[str, tuple[str, str]],
        applied: list[Write],
    ) -> None:
        # Blobs referenced by the records on the PDS as each batch starts: the PDS keeps those (it deletes a
        # blob with the last record that references it, and garbage-collects uploads nothing references).
        on_pds = {record.rkey: set(_blob_cids(record.value)) for record in existing}
        # Blobs the blob stage uploaded, on the PDS while fresh; but not one that a record this plan updates
        # or deletes references now: the PDS may delete it with that write, so it is uploaded again before
        # the write that needs it, as any blob a batch needs and no record holds.
        touched = {w.rkey for w in plan.writes if w.action != "create"}
        pre_uploaded = self._pre_uploaded.first_attempt(
            {cid for rkey, cids in on_pds.items() if rkey in touched for cid in cids}
        )
        # The links of a batch go to the run's LinkWriter (and to MongoDB, once enough are gathered) while the
        # PDS commits the next one: MongoDB is only touched from this thread (the embedded store's
        # connections are bound to theirs), the commit waits in another.
        deferred: list[UpdateOne] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="applyWrites") as sender:
            try:
                for batch in batch_writes(self.rules.nsid, plan.writes):
                    held = set().union(*on_pds.values())
                    self.client.wait_to_write(session)  # no upload for a write the PDS would refuse
                    relied = fresh(pre_uploaded) - held
                    self._upload_blobs(session, batch, held | relied)
                    ops = [write_op(self.rules.nsid, w) for w in batch]
                    self._in_flight = batch
                    sending = sender.submit(self._commit, session, ops)
                    try:
                        self._write_back(deferred)
                        deferred = []
                    finally:
                        try:
                            answer, swapped = sending.result()
                        except PdsError as exc:
                            # A pre-upload the PDS no longer holds (collected sooner than the window says):
                            # the write was refused unapplied; its blobs go again, and the write once more.
                            cids = _batch_cids(batch)
                            if exc.error != "BlobNotFound" or not relied & cids:
                                raise
                            pre_uploaded.clear()
                            self._upload_blobs(session, batch, cids - relied)
                            answer, swapped = self._commit(session, ops)
                    self._in_flight = []
                    self.report.commits += 1
                    self._after = after_commit(self._after, self.rules.nsid, swapped, batch, answer)
                    for write, result in zip(batch, answer.get("results", []), strict=False):
                        if write.action != "delete":
                            results[write.rkey] = (result.get("uri") or self.uri(write.rkey), result["cid"])
                    for write in batch:
                        if write.action == "delete":
                            on_pds.pop(write.rkey, None)
                        else:
                            on_pds[write.rkey] = set(_blob_cids(write.value or {}))
                    applied.extend(batch)
                    deferred = self._links_for(batch, results)
            finally:
                self._write_back(deferred)  # the last applied batch's links, even when a later one failed

    def _commit(self, session: Session, ops: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """One applyWrites that names the commit it builds on (swapCommit): its success proves no other write
        came between, so the account's convergence marks of other collections carry over (`on_commit`).
        Returns the PDS's answer and the commit it built on.
        Our own writers to the account take turns (`turns`), each starting from the head the one before made
        (no getLatestCommit per batch); another writer's commit in between makes the PDS refuse the write
        unapplied (InvalidSwap), and it is sent again on the head the PDS reports. The first write builds on
        the newer of that head and the commit the plan read (no getLatestCommit either)."""
        with self.turns() as turn:
            known = [h for h in (turn.head if turn else None, self._read_head) if h]
            head = max(known, key=lambda h: h[1]) if known else None
            self._read_head = None  # our commit moves the head on: later batches follow the turn
            for attempt in range(MAX_SWAP_RETRIES + 1):
                head_cid, head_rev = head or latest_commit(self.client, self.account.did)
                body = encode_body({"repo": self.account.did, "writes": ops, "swapCommit": head_cid})
                try:
                    answer = self.client.apply_writes(session, body)
                except PdsError as exc:
                    if exc.error != "InvalidSwap" or attempt == MAX_SWAP_RETRIES:
                        if turn:
                            turn.forget()  # the outcome may be unknown, and with it the head
                        raise
                    head = None  # another writer moved the head: ask the PDS
                    self.client.sleep(0.05 * attempt)
                    continue
                commit = answer.get("commit") or {}
                if commit.get("cid") and commit.get("rev"):
                    if turn:
                        turn.made(commit["cid"], commit["rev"])
                    if self.on_commit:
                        self.on_commit(head_rev, commit["rev"])
                return answer, head_cid
        raise AssertionError("unreachable")

    def _upload_blobs(self, session: Session, batch: list[Write], held: set[str]) -> None:
        """Upload the batch's blobs the PDS does not hold yet, right before the write that references them
        (the PDS garbage-collects blobs no record references)."""
        needed = {cid for w in batch if w.value for cid in _blob_cids(w.value)} - held
        if not needed:
            return

        def upload(cid: str) -> int:
            blob = self._blob_paths[cid]
            answer = self.client.upload_blob(session, blob.read(), blob.mime_type)
            got = answer.get("ref", {}).get("$link")
            if got != cid:
                raise PdsError(f"uploadBlob answered CID {got}, expected {cid}")
            return blob.size

        # Small blobs (thumbnails) are mostly a round trip each: several at once (`upload_concurrency`); big
        # ones (tape videos) fewer, so no more than ~UPLOAD_BYTES_IN_FLIGHT are in memory.
        largest = max(self._blob_paths[cid].size for cid in needed)
        workers = max(1, min(upload_concurrency(), UPLOAD_BYTES_IN_FLIGHT // max(largest, 1)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            sizes = list(pool.map(upload, sorted(needed)))
        self.report.blobs_uploaded += len(sizes)
        self.report.blob_bytes_uploaded += sum(sizes)

    def _links_for(self, batch: list[Write], results: dict[str, tuple[str, str]]) -> list[UpdateOne]:
        ops = []
        for write in batch:
            item = self._by_ref.get(write.ref) if write.ref else None
            if item is None:
                continue
            if write.action == "delete":
                continue
            uri, cid = results[write.rkey]
            self._linked.add(item.ref)
            if op := self._set_link(item, write.rkey, uri, cid):
                ops.append(op)
        return ops

    def _write_back_final(
        self, plan: Plan, existing: list[Existing], results: dict[str, tuple[str, str]]
    ) -> None:
        """Links of records kept as they were (adopted, or written before a crash), and unset links of
        items whose record is gone."""
        listed = {r.rkey: r.cid for r in existing}
        ops: list[UpdateOne] = []
        for item in self.items:
            rkey = plan.kept.get(item.ref)
            if item.ref in self._linked:
                continue
            if rkey is not None and item.wanted and item.problem is None:
                uri, cid = results.get(rkey) or (self.uri(rkey), listed.get(rkey))
                if cid is not None and (op := self._set_link(item, rkey, uri, cid)):
                    ops.append(op)
            elif item.link is not None and not item.wanted:
                ops.append(UpdateOne({"_id": _mongo_id(item.ref)}, link_unset(self.rules.mirrors_link)))
        self._write_back(ops)

    def _set_link(self, item: Item, rkey: str, uri: str, cid: str) -> UpdateOne | None:
        if item.link and (item.link.rkey, item.link.uri, item.link.cid) == (rkey, uri, cid):
            return None
        update = link_set(self.rules.mirrors_link, rkey, uri, cid, datetime.now(UTC))
        return UpdateOne({"_id": _mongo_id(item.ref)}, update)

    def _write_back(self, ops: list[UpdateOne]) -> None:
        self.links.add(self.rules.collection, ops)
        self.report.mongo_updates += len(ops)


def _not_applied(plan: Plan, applied: list[Write]) -> list[Write]:
    done = {w.rkey for w in applied}
    return [w for w in plan.writes if w.rkey not in done]


def _mongo_id(ref: str) -> Any:
    from bson import ObjectId

    return ObjectId(ref) if ObjectId.is_valid(ref) else ref


def _batch_cids(batch: list[Write]) -> set[str]:
    return {cid for w in batch if w.value for cid in _blob_cids(w.value)}


def _blob_cids(value: dict[str, Any]) -> list[str]:
    return [
        v["ref"]["$link"]
        for v in value.values()
        if isinstance(v, dict) and v.get("$type") == "blob" and isinstance(v.get("ref"), dict)
    ]
