"""A realistic synthetic Aesthetic Computer dataset: MongoDB documents plus the media files they point at.

Everything except account passwords is deterministic for a given seed. `seed_dataset` (seed.py) runs a
recipe (recipes.py, platform.py) on a builder (builder.py): the users, whose accounts are created meanwhile
(accounts.py), the documents, and their media files, written at once or as jobs for worker processes
(media_files.py, media_jobs.py). The names below are the ones callers use.
"""

from acpipeline.demo.dataset.accounts import ACCOUNT_WORKERS
from acpipeline.demo.dataset.media_files import build_tape_zip
from acpipeline.demo.dataset.model import (
    ART_BUCKET,
    ART_GUEST_HANDLE,
    ART_GUEST_SUB,
    COLLECTIONS,
    USER_BUCKET,
    CreateAccount,
    DatasetExists,
    DatasetSummary,
    DemoUser,
    PlatformRecord,
    painting_key,
    zip_key,
)
from acpipeline.demo.dataset.seed import seed_dataset

__all__ = [
    "ACCOUNT_WORKERS",
    "ART_BUCKET",
    "ART_GUEST_HANDLE",
    "ART_GUEST_SUB",
    "COLLECTIONS",
    "USER_BUCKET",
    "CreateAccount",
    "DatasetExists",
    "DatasetSummary",
    "DemoUser",
    "PlatformRecord",
    "build_tape_zip",
    "painting_key",
    "seed_dataset",
    "zip_key",
]
