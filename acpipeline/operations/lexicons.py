"""Publish our lexicons as `com.atproto.lexicon.schema` records in one account's repository, or compare.

An operator's one-off, not a Dagster job: list what the repository publishes, plan (`core.lexicon_publish`),
and write the new and changed schemas in one applyWrites. Published schemas that are no longer ours are
reported, never deleted. The write is not one of the sync's chained commits, so the account's convergence
marks lapse and its next sync lists its collections in full once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagster import Definitions

from acpipeline.core.batches import encode_body, write_op
from acpipeline.core.lexicon import load_documents
from acpipeline.core.lexicon_publish import (
    SCHEMA_NSID,
    DnsRecord,
    LexiconPlan,
    dns_records,
    plan_schemas,
)
from acpipeline.errors import OperatorError
from acpipeline.resources import resolved
from acpipeline.resources.pds import PdsClient, PdsError, TransientWriteError
from acpipeline.sync.extract import find_account


@dataclass
class LexiconReport:
    """What one `publish` or `check` found (and wrote) in one account's repository."""

    handle: str
    did: str
    plan: LexiconPlan
    publish: bool  # a publish (the plan's writes applied), not a check
    written: int = 0
    rev: str | None = None  # the commit that wrote them

    def dns(self) -> list[DnsRecord]:
        return dns_records(list(self.plan.docs), self.did)

    def as_dict(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "did": self.did,
            **self.plan.as_dict(),
            "written": self.written,
            "rev": self.rev,
            "dns": [{"type": "TXT", "name": r.name, "value": r.value} for r in self.dns()],
        }

    def lines(self) -> list[str]:
        """The operator's summary: the differences (check) or what was written (publish), then DNS."""
        plan = self.plan
        head = f"{self.handle} ({self.did}): {len(plan.docs)} lexicons of ours"
        if self.publish:
            done = [f"created {n}" for n in plan.create] + [f"updated {n}" for n in plan.update]
            out = [f"{head}; {self.written} written" + (f" in commit {self.rev}" if self.rev else "")]
            out += [f"  {line}" for line in done]
            out.append(f"  {len(plan.unchanged)} unchanged, not rewritten")
            out += [
                f"  left alone: {n} is published but no lexicon of ours has this id (publish never "
                "deletes; `acpipeline lexicons check` reports it)"
                for n in plan.extra
            ]
        else:
            out = [f"{head}: " + ("identical" if plan.identical else f"{len(plan.lines())} differences")]
            out += [f"  {line}" for line in plan.lines()]
        return out + [str(record) for record in self.dns()]


def published_schemas(client: PdsClient, did: str) -> dict[str, dict[str, Any]]:
    """The repository's schema records, by rkey (their NSID)."""
    return {r["uri"].rsplit("/", 1)[-1]: r["value"] for r in client.list_records(did, SCHEMA_NSID)}


def run_lexicons(defs: Definitions, handle: str, publish: bool) -> LexiconReport:
    """Compare the account's published schemas with ours; with `publish`, write the new and changed ones."""
    docs = load_documents()
    with resolved(defs, "mongo") as mongo, resolved(defs, "pds") as pds:
        account = find_account(mongo.db(), handle)
        if account is None:
            raise OperatorError(
                f"no user in MongoDB has the ATProto handle {handle} (or its did/password is missing)"
            )
        client = pds.client()
        try:
            plan = plan_schemas(docs, published_schemas(client, account.did))
            report = LexiconReport(handle, account.did, plan, publish=publish)
            writes = plan.writes()
            if publish and writes:
                body = {"repo": account.did, "writes": [write_op(SCHEMA_NSID, w) for w in writes]}
                session = client.session(account.did, account.password)
                answer = client.apply_writes(session, encode_body(body))
                report.written, report.rev = len(writes), answer.get("commit", {}).get("rev")
        except TransientWriteError as exc:
            raise OperatorError(f"lexicons of {handle}: {exc}; publishing again is safe") from None
        except PdsError as exc:
            raise OperatorError(f"lexicons of {handle}: {exc}") from None
    return report
