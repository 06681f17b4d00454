"""`acpipeline doctor`: the configuration checked end to end, one result per check.

Each check is a small function returning a `CheckResult` (`ok`, a warning, a failure naming the setting to
fix, or skipped because a check it needs failed). They run in order: MongoDB, the PDS, a sample of accounts
(sessions through `PdsClient.session`, which reuses the saved ones, so repeated runs spend no logins), the
PDS's rate limits (whether it applies them, whether the bypass key gets past them, and how long the backlog's
sync takes under them), storage (a few real media URLs), ffmpeg, and the Dagster instance with its daemon.
Passwords, tokens and the bypass key never reach a result.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster import Definitions

from acpipeline.operations.doctor.base import DEFAULT_SAMPLE, WORDS, CheckResult, Doctor
from acpipeline.operations.doctor.limits import check_limits
from acpipeline.operations.doctor.services import (
    check_accounts,
    check_dagster,
    check_ffmpeg,
    check_mongodb,
    check_pds,
    check_state,
)
from acpipeline.operations.doctor.storage import check_storage
from acpipeline.resources import resolved

# The checks in order, each with the checks it needs to have passed.
CHECKS: tuple[tuple[str, Callable[[Doctor], CheckResult], tuple[str, ...]], ...] = (
    ("mongodb", check_mongodb, ()),
    ("pds", check_pds, ()),
    ("state", check_state, ("mongodb",)),
    ("accounts", check_accounts, ("mongodb", "pds", "state")),
    ("limits", check_limits, ("pds",)),
    ("storage", check_storage, ("mongodb",)),
    ("ffmpeg", lambda _: check_ffmpeg(), ()),
    ("dagster", lambda _: check_dagster(), ()),
)


def run_checks(doctor: Doctor) -> list[CheckResult]:
    """Every check in order; one whose prerequisite failed is skipped, naming it."""
    results: dict[str, CheckResult] = {}
    try:
        for name, check, needs in CHECKS:
            failed = [need for need in needs if not results[need].ok]
            if failed:
                results[name] = CheckResult(name, "skipped", f"skipped: the {failed[0]} check failed")
            else:
                results[name] = check(doctor)
    finally:
        if doctor.client is not None:
            doctor.client.close()
    return list(results.values())


def run_doctor(defs: Definitions, sample: int = DEFAULT_SAMPLE) -> list[CheckResult]:
    """The checks with the resources the definitions configure (from the environment)."""
    with (
        resolved(defs, "mongo") as mongo,
        resolved(defs, "pds") as pds,
        resolved(defs, "storage") as storage,
    ):
        return run_checks(Doctor(mongo, pds.url, storage, sample))


def summary(results: list[CheckResult]) -> str:
    """The report's last line: how many checks failed (and were skipped), else that all passed, naming
    warnings."""
    counts = {status: sum(r.status == status for r in results) for status in WORDS}
    if counts["fail"]:
        return (
            f"{counts['fail']} of {len(results)} checks failed"
            + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
            + ": fix the FAIL lines above"
        )
    warned = f" ({counts['warn']} with a warning)" if counts["warn"] else ""
    return f"all {len(results)} checks passed{warned}"
