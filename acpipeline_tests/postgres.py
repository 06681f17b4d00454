"""A throwaway PostgreSQL cluster for the tests: Debian's server (`make test` installs it), in a temporary
data directory, on a free port, stopped by its process id.

The server refuses to run as root (sessions and CI run as root): there, every server command goes through
`runuser -u postgres`, and the data directory is made reachable by that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from acpipeline.localpds.server import free_port

SERVER_USER = "postgres"  # Debian's package creates it


def pg_bin() -> Path | None:
    """The folder of `pg_ctl` and `initdb`: on PATH, else Debian's newest `/usr/lib/postgresql/N/bin`."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(debian[-1]).parent if debian else None


@dataclass
class PgCluster:
    root: Path
    port: int
    pid: int
    user: str

    def url(self, db: str, user: str | None = None, password: str | None = None) -> str:
        """A plain `postgresql://` URL, the form hosting providers hand out."""
        userinfo = f"{user or self.user}:{password}" if password else user or self.user
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=db)
        connection.autocommit = True
        return connection

    def create_database(self, name: str, owner: str | None = None, password: str | None = None) -> str:
        """A new database; with `owner`, also that login role, with `password`."""
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            if owner:
                cursor.execute(
                    sql.SQL("create role {} login password %s").format(sql.Identifier(owner)), [password]
                )
            owned = sql.SQL(" owner {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
            cursor.execute(sql.SQL("create database {}").format(sql.Identifier(name)) + owned)
        return name

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster), then its data directory goes."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                os.kill(self.pid, 0)  # raises ProcessLookupError once it is gone
                time.sleep(0.1)
            os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """initdb (trust authentication, local only) and start the server; its pid from `postmaster.pid`."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is missing: apt-get install -y postgresql (make test installs it)")
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", SERVER_USER, "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="acpipeline-pg-"))
    root.chmod(0o755)  # the server's user must reach its data directory inside
    data, log = root / "data", root / "server.log"
    if as_root:
        shutil.chown(root, SERVER_USER)
    port = free_port()
    try:
        subprocess.run(
            [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", SERVER_USER],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as error:
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        output = error.stderr.decode(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start: {output}\n{server_log}") from error
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return PgCluster(root, port, pid, SERVER_USER)
