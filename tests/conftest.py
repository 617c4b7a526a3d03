"""Shared fixtures: the real data in ../shared/data, real servers on loopback (jeo-tiler, moto's S3)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real Sentinel-2 / Landsat 8 STAC catalog; tests fail (not skip) without it."""
    if not (SHARED_DATA / "catalog.json").exists():
        pytest.fail(f"real test data missing: {SHARED_DATA}/catalog.json")
    return SHARED_DATA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A real uvicorn serving jeo-tiler on loopback."""

    url: str
    home: Path
    process: subprocess.Popen

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)


def start_server(home: Path, *, workers: int = 1, env: dict[str, str] | None = None) -> Server:
    """Start `jeo serve` with `JEO_HOME=home` on a free port and wait until /healthz answers."""
    port = _free_port()
    environment = {**os.environ, "JEO_HOME": str(home), **(env or {})}
    log = open(home / f"server-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tiler.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )
    server = Server(f"http://127.0.0.1:{port}", home, process)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {(home / f'server-{port}.log').read_text()[-3000:]}")
        try:
            if server.get("/healthz").status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(server)
    pytest.fail("server did not start in 300 s")


def stop_server(server: Server) -> None:
    """Stop the server by its pid."""
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@dataclass
class Postgres:
    """A throwaway PostgreSQL + PostGIS (scripts/postgres-start.sh) with a pgSTAC template database."""

    url: str
    directory: Path
    made: int = 0

    def database(self) -> str:
        """URL of a new database with pgSTAC and the `jeo` schema (a copy of the migrated template)."""
        import psycopg

        self.made += 1
        name = f"test_{self.made}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE jeo_template")
        return self.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """PostgreSQL for the session (started only by tests that ask for it), stopped at the end."""
    import psycopg

    from mosaics.pgstac import migrate

    directory = Path(tempfile.mkdtemp(prefix="jeo-pg-test."))
    started = subprocess.run(["bash", "scripts/postgres-start.sh", str(directory)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        pytest.fail(f"scripts/postgres-start.sh failed: {started.stderr[-3000:]}")
    url = started.stdout.strip().splitlines()[-1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE jeo_template TEMPLATE jeo")
    migrate(url.rsplit("/", 1)[0] + "/jeo_template")
    yield Postgres(url, directory)
    subprocess.run(["bash", "scripts/postgres-stop.sh", str(directory)], cwd=REPO_ROOT, timeout=120, check=True)


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_location(request, tmp_path) -> str:
    """A new, empty catalog location on each backend: a SQLite file, or a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.db")
    return request.getfixturevalue("postgres").database()


@pytest.fixture(scope="session")
def jeo_home(tmp_path_factory, shared_data) -> Path:
    """A JEO_HOME whose catalog holds all of ../shared/data."""
    from mosaics.catalog import Catalog

    home = tmp_path_factory.mktemp("jeo-home")
    Catalog(home / "catalog.db").ingest(shared_data)
    return home


@pytest.fixture(scope="session")
def server(jeo_home) -> Server:
    """One real uvicorn for the session's HTTP tests."""
    running = start_server(jeo_home)
    yield running
    stop_server(running)


@dataclass
class S3:
    """moto's S3-compatible server: its URL, the environment clients need, a boto3 client, a bucket."""

    url: str
    env: dict[str, str]
    client: object
    bucket: str


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3:
    """moto's S3-compatible server on a loopback port, with one bucket."""
    import boto3

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client.create_bucket(Bucket="jeo-exports")
    yield S3(url, env, client, "jeo-exports")
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
