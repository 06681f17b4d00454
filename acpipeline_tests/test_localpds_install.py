"""Processes that start the reference PDS at once install it in turn: two `npm ci` in one folder break each
other's native build (seen when tests started beside `make node`)."""

from __future__ import annotations

import threading
import time

from acpipeline.localpds import server


def test_concurrent_installs_take_turns_and_the_second_finds_it_installed(tmp_path, monkeypatch):
    installed = tmp_path / "installed"
    runs: list[tuple[float, float]] = []

    def slow_install(log):
        started = time.monotonic()
        time.sleep(0.3)  # npm ci, in little
        installed.touch()
        runs.append((started, time.monotonic()))

    monkeypatch.setattr(server, "INSTALL_LOCK", tmp_path / ".install.lock")
    monkeypatch.setattr(server, "is_installed", installed.exists)
    monkeypatch.setattr(server, "_install", slow_install)
    # Each thread opens the lock file itself, as separate processes do: flock excludes between the two.
    threads = [threading.Thread(target=server.install, kwargs={"log": print}) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(runs) == 1, runs
