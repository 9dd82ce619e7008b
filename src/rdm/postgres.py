"""A PostgreSQL server from this machine's own binaries, for `rdm services start --stack postgres`:
one data folder, listening on 127.0.0.1 only, passwords over TCP, and the databases the MLflow and
Prefect servers use, as `infra/postgres/init.sql` makes them in the compose stack.

PostgreSQL refuses to run as root; run as root, its programs run as the OS user `postgres` (Debian's
`postgresql` package makes it), so the data folder must be one that user can reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rdm.errors import UserError

SERVER_USER = "postgres"
"""The OS user the server runs as when started by root."""
DATABASES = {"mlflow": (), "prefect": ("pg_trgm",)}
"""Database -> the extensions it needs (Prefect's migrations build trigram indexes)."""
LOG = "server.log"


class PostgresError(UserError):
    pass


@dataclass(frozen=True)
class Postgres:
    data: Path
    port: int
    user: str = "rdm"
    password: str = "rdm-local-only"
    host: str = "127.0.0.1"

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A connection URL, e.g. `postgresql+asyncpg` for Prefect, `postgresql` for MLflow."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.data / LOG


def start(server: Postgres, timeout: int = 60) -> int:
    """Initialise the data folder if it is new, start the server, make the databases; its pid."""
    new = not (server.data / "PG_VERSION").is_file()
    if new:
        _initialise(server)
    options = f"-c listen_addresses={server.host} -p {server.port} -k {server.data}"
    pg_ctl = [_binary("pg_ctl"), "-D", str(server.data), "-l", str(server.log), "-o", options]
    _run(
        [*pg_ctl, "-w", "-t", str(timeout), "start"],
        what=f"PostgreSQL on {server.host}:{server.port} (its log: {server.log})",
    )
    if new:
        _create_databases(server)
    return pid(server)


def stop(server: Postgres) -> None:
    """A fast shutdown: running transactions are rolled back, clients disconnected."""
    if (server.data / "postmaster.pid").is_file():
        _run(
            [_binary("pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop"],
            what="stopping PostgreSQL",
        )


def pid(server: Postgres) -> int:
    """The postmaster's process id, from its pid file."""
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _initialise(server: Postgres) -> None:
    server.data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(server.data, SERVER_USER, SERVER_USER)
        reach = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-w", str(server.data)])
        if reach.returncode:
            raise PostgresError(
                f"{server.data}: the OS user {SERVER_USER}, which PostgreSQL runs as under root, cannot "
                "reach this folder (a parent is closed to it); set services.postgres_data to a folder "
                "it can reach, e.g. /var/tmp/rdm-postgres"
            )
    server.data.chmod(0o700)
    initdb = [_binary("initdb"), "-D", str(server.data), "-U", server.user, "-E", "UTF8", "--locale=C.UTF-8"]
    _run(
        [*initdb, "--auth-local=trust", "--auth-host=scram-sha-256"],
        what=f"initdb {server.data}",
    )


def _create_databases(server: Postgres) -> None:
    """The password (over the unix socket, which only the server's OS user and root can open) and
    the databases with their extensions."""
    import psycopg2

    def execute(database: str, *statements: str) -> None:
        connection = psycopg2.connect(
            host=str(server.data), port=server.port, user=server.user, dbname=database
        )
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        try:
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            connection.close()

    execute("postgres", f"ALTER USER {server.user} PASSWORD '{server.password}'")
    for database, extensions in DATABASES.items():
        execute("postgres", f"CREATE DATABASE {database}")
        execute(database, *(f"CREATE EXTENSION IF NOT EXISTS {e}" for e in extensions))


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise PostgresError(
            f"PostgreSQL's {name} is not installed; install it (Debian: apt-get install postgresql) "
            "or use the default SQLite stack (`rdm services start`)"
        )
    return found


def _run(args: list[str], what: str = "") -> None:
    if os.geteuid() == 0:
        args = ["runuser", "-u", SERVER_USER, "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL)
    if done.returncode:
        raise PostgresError(f"{what or args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
