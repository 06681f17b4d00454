"""Settings from a file the operator points at, as any deployment gives them: `KEY=value` lines (the dotenv
format), `ACPIPELINE_SETTINGS_FILE`, default `$ACPIPELINE_HOME/settings.env`.

The environment wins, and the file applies whole or not at all: when the environment sets one of its
variables to another value, none of it applies (a file written for one deployment never mixes with another
deployment's environment). The command line applies it as it starts; Dagster puts it in the environment of
each code server before the code location loads and of each run, through the instance's secrets loader
(`acpipeline.settings_loader.SettingsFileLoader`, named in `dagster.yaml`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from acpipeline.settings import home_path

SETTINGS_FILE = "ACPIPELINE_SETTINGS_FILE"


def settings_path() -> Path:
    """`ACPIPELINE_SETTINGS_FILE`, else `settings.env` in `ACPIPELINE_HOME` (default `./.acpipeline`)."""
    named = os.environ.get(SETTINGS_FILE)
    if named:
        return Path(named)
    return home_path() / "settings.env"


@dataclass(frozen=True)
class FileSettings:
    """One settings file as read: what it sets, and which of those the environment sets otherwise (then none
    of it applies)."""

    path: Path
    values: dict[str, str]  # what the file sets
    conflicts: list[str]  # the variables of it the environment sets otherwise

    def applicable(self, environ: Mapping[str, str]) -> dict[str, str]:
        """What the environment lacks of the file; nothing when the environment contradicts any of it."""
        if self.conflicts:
            return {}
        return {name: value for name, value in self.values.items() if name not in environ}

    def warning(self) -> str:
        return f"{self.path} not applied: the environment sets {', '.join(self.conflicts)} otherwise"


def read_settings(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> FileSettings:
    """The file as it is (`${...}` not expanded; a missing file sets nothing), checked against `environ`;
    applies nothing."""
    path = path or settings_path()
    found = dotenv_values(path, interpolate=False) if path.is_file() else {}
    values = {name: value for name, value in found.items() if value is not None}
    conflicts = sorted(name for name, value in values.items() if environ.get(name, value) != value)
    return FileSettings(path, values, conflicts)


def apply_settings_file() -> tuple[FileSettings, dict[str, str]]:
    """The file's settings in this process's environment (and so in the processes it starts): the file
    read, and what of it was applied."""
    found = read_settings()
    applied = found.applicable(os.environ)
    os.environ.update(applied)
    return found, applied
