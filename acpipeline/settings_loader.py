"""The settings file (`acpipeline.settings_file`) as Dagster's secrets loader: Dagster puts what it returns
in the environment of each code server before the code location loads, and of each run, whatever launched
it. `dagster.yaml` names it under `secrets: custom:`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from dagster import DagsterInstance
from dagster._core.secrets import SecretsLoader
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from acpipeline.settings_file import read_settings

logger = logging.getLogger(__name__)


class SettingsFileLoader(SecretsLoader[DagsterInstance], ConfigurableClass):
    """Dagster's hook for a code server's and a run's environment (`secrets: custom:` in dagster.yaml)."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> SettingsFileLoader:
        return cls(inst_data)

    def get_secrets_for_environment(self, location_name: str | None) -> dict[str, str]:
        found = read_settings()
        if found.conflicts:
            logger.warning(found.warning())
        return found.applicable(os.environ)
