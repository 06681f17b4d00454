"""Demo data: a synthetic Aesthetic Computer dataset and a local server for its media files.

The names below are imported on first use, so `from acpipeline.demo import SIZES` (the demo's command
does it whenever the command line starts) loads neither the dataset builder nor Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

SIZES = ("small", "bench", "platform")  # the datasets seed_dataset makes (dataset/seed.py)

_LAZY = {
    "ART_BUCKET": "dataset",
    "ART_GUEST_HANDLE": "dataset",
    "ART_GUEST_SUB": "dataset",
    "COLLECTIONS": "dataset",
    "USER_BUCKET": "dataset",
    "CreateAccount": "dataset",
    "DatasetExists": "dataset",
    "DatasetSummary": "dataset",
    "DemoUser": "dataset",
    "build_tape_zip": "dataset",
    "painting_key": "dataset",
    "seed_dataset": "dataset",
    "zip_key": "dataset",
    "MediaServer": "media_server",
}

if TYPE_CHECKING:
    from acpipeline.demo.dataset import (
        ART_BUCKET,
        ART_GUEST_HANDLE,
        ART_GUEST_SUB,
        COLLECTIONS,
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
