"""Local stand-ins for a lab's team services, each a real server on 127.0.0.1.

Used by the tests and benchmarks of the cluster set-up (and usable by hand): an MLflow
tracking server (any backend store, any artifact root), a throwaway PostgreSQL cluster (the
MLflow backend store and the Optuna study) and an S3-compatible object store (moto in server
mode: Ray's ``storage_path=s3://...`` and MLflow's artifacts). Every process is started in
its own session and stopped by its process id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """A service could not start or stop (one line, with the end of its log)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (from the kernel's ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` on any address now."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port_range(count: int, taken: set[int]) -> int:
    """The first of ``count`` consecutive free ports, none in ``taken`` (they are added to
    it), between 20000 and 30000: below the kernel's ephemeral range, so that no port a
    process is given by the kernel later (``free_port``, Ray's random ones) falls in it."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(20000, 30000 - count)
        span = range(first, first + count)
        if taken.isdisjoint(span) and all(port_is_free(p) for p in span):
            taken.update(span)
            return first
    raise ServiceError(f"no {count} consecutive free ports between 20000 and 30000")


def tail(path: Path, n: int = 3) -> str:
    """The last ``n`` lines of a log, on one line."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(lines[-n:]) or "(no output)"


def start_process(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                  user: str | None = None) -> subprocess.Popen:
    """``cmd`` in its own session (so that its children can be stopped with it), as
    ``user`` when given (the caller must be root then)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, user=user)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (its id), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen]:
    """:func:`start_process` for the length of a ``with`` block."""
    proc = start_process(cmd, log, env=env)
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers (any HTTP status); a dead ``proc`` or a timeout raise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServiceError(f"{' '.join(map(str, proc.args[:2]))} ended (exit "
                               f"{proc.returncode}): {tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise ServiceError(f"{url} did not answer in {timeout:.0f} s: {tail(log)}")


class Service:
    """A server process of ours: ``start()`` (in each subclass), ``stop()`` by its process
    id, and ``with`` for both."""

    proc: subprocess.Popen | None = None

    def start(self) -> Self:  # pragma: no cover
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowServer(Service):
    """``mlflow server`` on 127.0.0.1: ``start()``, ``stop()`` and ``start()`` again on the
    same port (an outage and its end), ``url`` for ``--tracking-uri``."""

    def __init__(self, backend_store_uri: str, log_dir: str | Path, *,
                 artifacts_destination: str | None = None, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.backend_store_uri = backend_store_uri
        # the server proxies artifacts (clients need no keys); by default into its log folder,
        # not into ./mlartifacts of whoever started it
        self.artifacts_destination = artifacts_destination or str(Path(log_dir) / "mlartifacts")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"mlflow-server-{self.port}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_store_uri,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--artifacts-destination", self.artifacts_destination, "--serve-artifacts"]
        self.proc = start_process(cmd, self.log, env=self.env)
        wait_http(f"{self.url}/health", self.proc, self.log, timeout)
        return self



PG_LIB = Path("/usr/lib/postgresql")  # Debian: <version>/bin, out of PATH


def pg_bin(name: str) -> Path:
    """A PostgreSQL server program: Debian's newest version, else one in PATH."""
    versions = sorted((d for d in PG_LIB.glob("*/bin") if d.parent.name.isdigit()),
                      key=lambda d: int(d.parent.name), reverse=True)
    for d in versions:
        if (d / name).is_file():
            return d / name
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} not found (in {PG_LIB}/<version>/bin or PATH); install "
                           "PostgreSQL: apt-get install postgresql")
    return Path(found)


def server_user() -> str | None:
    """The unprivileged user a database server runs as when we are root (PostgreSQL refuses
    root): ``postgres`` (Debian's package makes it) or ``nobody``; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServiceError("running as root and neither user 'postgres' nor 'nobody' exists; "
                       "create an unprivileged user for the database server")


class Postgres(Service):
    """A throwaway PostgreSQL cluster on 127.0.0.1: ``initdb`` into a temp dir, the server on a
    free port with a unix socket dir of its own, a user with a password and one database per
    name in ``databases`` (MLflow and Optuna each keep an ``alembic_version`` table, so they
    need a database each). ``url_for(db)`` / ``url`` are SQLAlchemy URLs
    (``postgresql+psycopg2://``); ``stop()`` ends the server by its PID and removes the dir."""

    def __init__(self, databases: tuple[str, ...] = ("mlflow", "optuna"), *,
                 user: str = "lab", password: str | None = None, port: int | None = None,
                 base_dir: str | Path | None = None) -> None:
        self.databases, self.user = databases, user
        self.password = password or secrets.token_hex(12)  # other local users: no way in
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg", dir=base_dir or "/tmp"))  # short: socket
        self.data, self.socket_dir = self.dir / "data", self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.run_as = server_user()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_for(self.databases[0])

    def url_for(self, database: str) -> str:
        return (f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def _run(self, cmd: list[str], what: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              user=self.run_as, cwd=self.dir)
        if done.returncode != 0:
            out = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise ServiceError(f"PostgreSQL {what} failed (exit {done.returncode}): {out}")

    def start(self, timeout: float = 60) -> Postgres:
        self.socket_dir.mkdir()
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for p in (self.dir, self.socket_dir):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        self._run([str(pg_bin("initdb")), "-D", str(self.data), "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                   "--no-sync"], "initdb")
        self.proc = start_process(
            [str(pg_bin("postgres")), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.socket_dir), "-c", "fsync=off"],
            self.log, user=self.run_as)
        self._wait(timeout)
        psql = [str(pg_bin("psql")), "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        self._run([*psql, "-c", f"CREATE USER {self.user} WITH PASSWORD '{self.password}'"],
                  "create user")
        for db in self.databases:
            self._run([*psql, "-c", f"CREATE DATABASE {db} OWNER {self.user}"],
                      f"create database {db}")
        return self

    def _wait(self, timeout: float) -> None:
        """Until the server accepts connections on its TCP port."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ServiceError(f"postgres ended (exit {self.proc.returncode}): "
                                   f"{tail(self.log)}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=2):
                return
            time.sleep(0.2)
        raise ServiceError(f"postgres did not listen on 127.0.0.1:{self.port} in "
                           f"{timeout:.0f} s: {tail(self.log)}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by its PID), SIGKILL of the group after
        20 s; the cluster's directory is removed."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, timeout=0)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)



class S3Server(Service):
    """An S3-compatible object store on 127.0.0.1 (``moto_server``, in memory) with one
    bucket; ``endpoint`` and ``env`` (what a client reads: ``AWS_ENDPOINT_URL``, keys,
    region) for Ray's ``storage_path=s3://<bucket>/...``, pyarrow, boto3 and MLflow."""

    def __init__(self, log_dir: str | Path, bucket: str = "lab", *, port: int | None = None,
                 region: str = "us-east-1") -> None:
        self.bucket, self.region = bucket, region
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"moto-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": self.region}

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        env = self.env
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket (all pages)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def start(self, timeout: float = 60) -> S3Server:
        self.proc = start_process([str(BIN / "moto_server"), "-H", "127.0.0.1",
                                   "-p", str(self.port)], self.log)
        wait_http(f"{self.endpoint}/moto-api/", self.proc, self.log, timeout)
        self.client().create_bucket(Bucket=self.bucket)
        return self

