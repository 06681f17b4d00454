"""A fix to Dagster 1.13 that acpipeline applies when its definitions load (in the code server, in every run
and in the CLI).

A step waiting for a pool slot (our record stage, in the `pds_writes` pool) spins. Dagster's executor loop
sleeps for `InstanceConcurrencyContext.interval_to_next_pending_claim_check()`, which returns
`min([0, *(ready_at - now ...)])`: never more than zero. So while a slot is taken, each waiting run polls
without sleeping, on a full core, although it only asks the database again once its back-off (1 s,
growing to 15 s) has passed. At the platform's size four runs share two cores and two slots: the two
waiting runs took CPU from the two working ones (py-spy: about 15% of all run CPU was this loop). Dagster
saw it too (dagster-io/dagster#20367, closed unmerged). The fix returns the time until the first
back-off ends, so the loop sleeps exactly until Dagster would look again: the same claims, at the same
moments, without the spinning.

`acpipeline_tests/test_dagster_fixes.py` pins both Dagster's behaviour and the fix: when a Dagster release
fixes it, that test fails and this module goes."""

from __future__ import annotations

import time

from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

_DAGSTERS_OWN = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim may be tried again (0 when one may be tried now)."""
    timeouts = self._pending_timeouts.values() if self._pending_claims else ()
    if not timeouts:
        return 0.0
    return max(0.0, min(timeouts) - time.time())


def apply() -> None:
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]
