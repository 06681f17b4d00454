"""The edges of the pipeline: MongoDB, the PDS, and media storage, each a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import Definitions, EnvVar


@contextmanager
def resolved(defs: Definitions, name: str) -> Iterator[Any]:
    """A resource of the definitions with its EnvVars read from the environment, used as a plain object
    (as Dagster allows outside runs): initialising it through Dagster would open an ephemeral instance,
    which takes most of a no-op sync's time."""
    configured = (defs.resources or {})[name]
    fields = {key: getattr(configured, key) for key in type(configured).model_fields}
    resource = type(configured)(
        **{key: value.get_value() if isinstance(value, EnvVar) else value for key, value in fields.items()}
    )
    try:
        yield resource
    finally:
        resource.teardown_after_execution(None)  # our resources' teardowns need no context
