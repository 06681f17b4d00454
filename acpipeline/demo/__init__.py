"""Demo data: a synthetic Aesthetic Computer dataset and a local server for its media files."""

from acpipeline.demo.dataset import (
    ART_BUCKET,
    ART_GUEST_HANDLE,
    ART_GUEST_SUB,
    COLLECTIONS,
    SIZES,
    USER_BUCKET,
    CreateAccount,
    DatasetExists,
    DatasetSummary,
    DemoUser,
    build_tape_zip,
    painting_key,
    seed_dataset,
    zip_key,
)
from acpipeline.demo.media_server import MediaServer

__all__ = [
    "ART_BUCKET",
    "ART_GUEST_HANDLE",
    "ART_GUEST_SUB",
    "COLLECTIONS",
    "SIZES",
    "USER_BUCKET",
    "CreateAccount",
    "DatasetExists",
    "DatasetSummary",
    "DemoUser",
    "MediaServer",
    "build_tape_zip",
    "painting_key",
    "seed_dataset",
    "zip_key",
]
