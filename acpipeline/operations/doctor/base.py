"""What every check of `acpipeline doctor` shares: its result, the configuration it checks, and the words
its lines are made of."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from acpipeline.resources.mongo import MongoDatabase, MongoResource
from acpipeline.resources.pds import PdsClient
from acpipeline.resources.storage import StorageResource
from acpipeline.sync.extract import Accounts

DEFAULT_SAMPLE = 3
WORDS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}
PDS_BUDGET_S = 20.0  # retries of one PDS call: a doctor answers in seconds, not the sync's two minutes


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report; `status` is "ok", "warn", "fail" or "skipped"."""

    check: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        """Passed (a warning passes: the CLI works, something may be missing)."""
        return self.status in ("ok", "warn")

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "status": self.status, "detail": self.detail}

    def line(self) -> str:
        return f"{WORDS[self.status]:<6}{self.check:<12}{self.detail}"


@dataclass
class Doctor:
    """The configured resources and what the earlier checks learned, for the later ones."""

    mongo: MongoResource
    pds_url: str | None
    storage: StorageResource
    sample: int = DEFAULT_SAMPLE
    db: MongoDatabase | None = None
    accounts: Accounts | None = None
    client: PdsClient | None = None


def without_secrets(text: str, connection_string: str | None) -> str:
    """`text` with the connection string and its user:password part left out."""
    if not connection_string:
        return text
    userinfo = connection_string.split("://", 1)[-1].rpartition("@")[0]
    for secret in (connection_string, userinfo):
        if secret:
            text = text.replace(secret, "…")
    return text


def english_list(names: list[str]) -> str:
    """Names joined for a sentence (`a, b and c`); `names` must not be empty."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def duration(seconds: float) -> str:
    """A length of time for a sentence, in minutes (rounded up), hours or days, whichever reads best."""
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def time_ago(seconds: float) -> str:
    """An age for a sentence (how long ago a heartbeat was), in seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
