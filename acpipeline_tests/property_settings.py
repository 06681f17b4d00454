"""How many generated examples the property tests (test_properties.py) and fuzzers (test_fuzz.py) try.

The default run is small, fast and reproducible (`derandomize`: the same examples every run, nothing stored
under `.hypothesis/`). `ACPIPELINE_PROPERTY_EXAMPLES=N` gives every property N examples instead, drawn at
random each run (a failure prints the `@reproduce_failure` blob that replays it), for a longer search:

    ACPIPELINE_PROPERTY_EXAMPLES=2000 .venv/bin/python -m pytest acpipeline_tests/test_properties.py \
        acpipeline_tests/test_fuzz.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

ENV = "ACPIPELINE_PROPERTY_EXAMPLES"

# Hypothesis's caches (character tables, constants) go to the temporary folder, not `.hypothesis/` in the
# working tree; no example database is kept (`database=None`).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "acpipeline-hypothesis")


def _requested() -> int | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a whole number of examples, not {raw!r}") from None
    if n < 1:
        raise ValueError(f"{ENV} must be at least 1, not {n}")
    return n


def examples(default: int) -> settings:
    """Settings for one property: `default` examples in the default run, `ACPIPELINE_PROPERTY_EXAMPLES` in
    a longer one. No deadline (a loaded CI machine is no failure); the per-input budgets that matter are
    asserted by the tests themselves."""
    requested = _requested()
    return settings(
        max_examples=requested or default,
        deadline=None,
        derandomize=requested is None,
        database=None,
        print_blob=requested is not None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
