"""The settings file (acpipeline/settings_file.py): the environment wins, the file applies whole or not at
all, and Dagster's secrets hook (acpipeline/settings_loader.py, named in dagster.yaml) hands it to the code
server and the runs."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from dagster import DagsterInstance

from acpipeline.settings_file import SETTINGS_FILE, read_settings, settings_path

PROJECT = Path(__file__).resolve().parents[1]
FILE = """# written by hand
PDS_URL="http://127.0.0.1:2583"
MONGODB_CONNECTION_STRING=
ACPIPELINE_IMAGE_URL="http://media.test/{user}/painting/{slug}.png"
PDS_ADMIN_PASSWORD="a$b"
"""


def test_what_the_environment_lacks_applies_and_a_contradiction_stops_all_of_it(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text(FILE)
    values = {
        "PDS_URL": "http://127.0.0.1:2583",
        "MONGODB_CONNECTION_STRING": "",
        "ACPIPELINE_IMAGE_URL": "http://media.test/{user}/painting/{slug}.png",
        "PDS_ADMIN_PASSWORD": "a$b",  # taken as written: no `$` expansion
    }
    nothing_set = read_settings(path, environ={})
    assert (nothing_set.values, nothing_set.conflicts) == (values, [])
    assert nothing_set.applicable({}) == values
    agreeing = read_settings(path, environ={"PDS_URL": "http://127.0.0.1:2583"})
    assert agreeing.applicable({"PDS_URL": "http://127.0.0.1:2583"}) == {
        k: v for k, v in values.items() if k != "PDS_URL"
    }
    real_database = {"MONGODB_CONNECTION_STRING": "mongodb://db.example:27017"}
    contradicted = read_settings(path, environ=real_database)
    assert contradicted.conflicts == ["MONGODB_CONNECTION_STRING"]
    assert contradicted.applicable(real_database) == {}  # not the file's PDS with a real database
    warning = contradicted.warning()
    assert "MONGODB_CONNECTION_STRING" in warning and "mongodb://" not in warning
    missing = read_settings(tmp_path / "none.env", environ={})
    assert (missing.values, missing.conflicts) == ({}, [])


def test_the_file_is_found_where_the_operator_points(tmp_path, monkeypatch):
    monkeypatch.delenv(SETTINGS_FILE, raising=False)
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path / "home"))
    assert settings_path() == tmp_path / "home" / "settings.env"
    monkeypatch.setenv(SETTINGS_FILE, str(tmp_path / "elsewhere.env"))
    assert settings_path() == tmp_path / "elsewhere.env"


def test_dagster_hands_the_file_to_a_code_server_and_a_run(tmp_path, monkeypatch):
    """What a code server and `dagster api execute_run` call before they load the code location:
    `DagsterInstance.inject_env_vars`, with the project's dagster.yaml naming the loader."""
    monkeypatch.setenv("ACPIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(SETTINGS_FILE, raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "settings.env").write_text('ACPIPELINE_ZIP_URL="http://zips.test/{slug}.zip"\n')
    monkeypatch.setenv("ACPIPELINE_ZIP_URL", "")  # recorded, so the value Dagster sets goes afterwards
    monkeypatch.delenv("ACPIPELINE_ZIP_URL")
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    assert config["secrets"]["custom"]["class"] == "SettingsFileLoader"
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as instance:
        instance.inject_env_vars("acpipeline")
        assert os.environ["ACPIPELINE_ZIP_URL"] == "http://zips.test/{slug}.zip"
