"""The platform's PDS over XRPC: one HTTP connection pool, one session per account, retries with backoff.

- `transport`: `send` with its retries within a budget, and the errors (`PdsError`; `TransientWriteError`
  for a write whose outcome is unknown, never re-sent blind; `RateLimited`); the rate-limit bypass key
  (`ACPIPELINE_PDS_RATELIMIT_BYPASS_KEY`) on every call.
- `throttle`: when the PDS signals pressure (429, or `ratelimit-remaining` near zero) every client of that
  PDS slows down, not only the one that was told: a "not before" time per PDS host (per account for
  repository writes) shared in this process and with every other one (concurrent Dagster runs).
- `sessions`: sessions persisted and refreshed in place, never a login per record.
- `client`: the calls (`PdsClient`), and the Dagster resource (`PdsResource`).
- `repo`: a whole repository from one getRepo CAR (`RepoSnapshot`), bounded (`RepoLimits`) and checked
  (`RepoError`).

With `ACPIPELINE_SHARED_STATE=mongodb` (runs on several machines, or in containers with an empty
ACPIPELINE_HOME each) sessions and throttle live in MongoDB instead of files under ACPIPELINE_HOME:
`acpipeline-sessions` (one document per account) and `acpipeline-throttle` (one document per PDS host, read
at most once a second per process).
"""

from acpipeline.resources.pds.client import PdsClient, PdsResource
from acpipeline.resources.pds.repo import RepoError, RepoLimits, RepoRecord, RepoSnapshot, parse_repo
from acpipeline.resources.pds.sessions import Session, _load_session, _save_session, _session_path
from acpipeline.resources.pds.throttle import RateLimitStatus, Throttle, rate_limit_status
from acpipeline.resources.pds.transport import PdsError, RateLimited, TransientWriteError, _safe_url

__all__ = [
    "PdsClient",
    "PdsError",
    "PdsResource",
    "RateLimitStatus",
    "RateLimited",
    "RepoError",
    "RepoLimits",
    "RepoRecord",
    "RepoSnapshot",
    "Session",
    "Throttle",
    "TransientWriteError",
    "_load_session",
    "_safe_url",
    "_save_session",
    "_session_path",
    "parse_repo",
    "rate_limit_status",
]
