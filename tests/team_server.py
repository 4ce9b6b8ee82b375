"""A team's MLflow setup, started on loopback for the tests and the load benchmark: a throwaway
PostgreSQL cluster, and `mlflow server` on it with proxied artifacts and MLflow's basic-auth app.

PostgreSQL comes from the machine: Debian's packages under /usr/lib/postgresql/*/bin, installed
here with apt-get when they are missing and we run as root (the CI machine is a fresh Debian
running as root). The cluster lives in a temporary directory owned by the `postgres` user (initdb
refuses to run as root), listens on 127.0.0.1 only, on a free port, with a random password, and
is stopped and removed at the end. Nothing here touches a cluster the machine already runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
APT_TIMEOUT_S = 900
ADMIN = "admin"


class Unavailable(RuntimeError):
    """PostgreSQL is not installed and cannot be installed here (the reason says why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin directory (it holds initdb and pg_ctl)."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def obtain_postgres(say=lambda message: print(message, file=sys.stderr)) -> Path:
    """PostgreSQL's bin directory, installing Debian's `postgresql` package first when it is
    missing and this process may (root, apt-get present); otherwise `Unavailable`."""
    found = postgres_bin()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and cannot be "
            "installed here (needs root and apt-get): install Debian's 'postgresql' package"
        )
    say(
        "team-server tests: PostgreSQL is not installed; running 'apt-get update && "
        f"apt-get install -y postgresql' (once, at most {APT_TIMEOUT_S} s)"
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        ):
            subprocess.run(
                command, check=True, env=env, timeout=APT_TIMEOUT_S, capture_output=True, text=True
            )
    except subprocess.CalledProcessError as exc:
        raise Unavailable(
            f"installing PostgreSQL failed: {' '.join(exc.cmd)} exited {exc.returncode}: "
            f"{(exc.stderr or exc.stdout or '').strip()[-500:]}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"installing PostgreSQL took over {APT_TIMEOUT_S} s") from exc
    found = postgres_bin()
    if found is None:
        raise Unavailable(
            "apt-get installed 'postgresql' but no initdb is under /usr/lib/postgresql"
        )
    return found


@dataclass
class Postgres:
    """A running throwaway cluster; `uri(db)` is its SQLAlchemy URI for MLflow (psycopg 3)."""

    bin: Path
    data: Path
    port: int
    password: str
    as_user: list[str] = field(default_factory=list)

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [*self.as_user, *args], check=True, capture_output=True, text=True, timeout=timeout
        )

    def create_database(self, name: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres password={self.password} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", "fast", "stop")
        shutil.rmtree(self.data, ignore_errors=True)


def start_postgres(bin_dir: Path) -> Postgres:
    """initdb and pg_ctl start a cluster in a new temporary directory, as `postgres` when root."""
    data = Path(tempfile.mkdtemp(prefix="dmt-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(16)
    server = Postgres(bin_dir, data, free_port(), password, as_user)
    pwfile = data / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        server.run(
            str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres",
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={server.port} "
            f"-c unix_socket_directories={data} -c fsync=off -c max_connections=200"
        )
        server.run(
            str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-o", options,
            "-l", str(data / "postgres.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = data / "postgres.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        shutil.rmtree(data, ignore_errors=True)
        raise Unavailable(f"PostgreSQL did not start: {exc.stderr or exc.stdout}{tail}") from exc
    return server


@dataclass
class TeamServer:
    """`mlflow server` with basic-auth on PostgreSQL: its URL and the admin's credentials."""

    url: str
    admin_password: str
    folder: Path
    process: subprocess.Popen

    def admin_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": self.admin_password}

    def auth_client(self):
        """MLflow's AuthServiceClient, as the admin (it reads the credentials from the env)."""
        from mlflow.server.auth.client import AuthServiceClient

        return AuthServiceClient(self.url)


def start_mlflow_server(postgres: Postgres, folder: Path, workers: int = 2) -> TeamServer:
    """`mlflow server --app-name basic-auth` on a new database of `postgres`, its artifacts
    proxied (`mlflow-artifacts:`) into `folder`, its users in a SQLite file in `folder`."""
    postgres.create_database("mlflow")
    admin_password = secrets.token_hex(12)
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without it every request (a model upload is dozens) re-hashes the password (PBKDF2):
        # seconds of server CPU per publish on a small machine. MLflow's own recommendation.
        "auth_cache_ttl_seconds = 60\n"
    )
    port = free_port()
    args = [
        MLFLOW, "server", "--backend-store-uri", postgres.uri("mlflow"),
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--app-name", "basic-auth",
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    log = folder / "mlflow-server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise Unavailable(
                f"mlflow server exited {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                stop_process(process)
                raise Unavailable(
                    f"mlflow server did not answer in 120 s:\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.3)
    return TeamServer(url, admin_password, folder, process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM by PID, then SIGKILL if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def team_server(folder: Path, workers: int = 2) -> Iterator[TeamServer]:
    """PostgreSQL and an authenticated MLflow server on it, for as long as the block lasts."""
    postgres = start_postgres(obtain_postgres())
    try:
        server = start_mlflow_server(postgres, folder, workers)
        try:
            yield server
        finally:
            stop_process(server.process)
    finally:
        postgres.stop()


def add_user(server: TeamServer, username: str, password: str) -> None:
    """Create an MLflow user (as the admin)."""
    with admin_credentials(server):
        server.auth_client().create_user(username, password)


def grant(server: TeamServer, username: str, kind: str, name: str, permission: str) -> None:
    """Give `username` `permission` (READ, EDIT, MANAGE...) on a `kind` ('experiment' id or
    'registered_model' name), as the admin."""
    with admin_credentials(server):
        server.auth_client().grant_user_permission(username, kind, name, permission)


@contextlib.contextmanager
def admin_credentials(server: TeamServer) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in server.admin_env()}
    os.environ.update(server.admin_env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
