"""Fixtures of the service tests: a fresh PostgreSQL database and Redis db per session, real Celery workers and
uvicorn servers as subprocesses. The quick demo zoo (``quick_repo``) and the footwear data (``footwear_target``,
``footwear_test``) come from tests/conftest.py; the zoo is copied per service, which may add and delete
teachers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# service/, app/ and worker/ import from the checkout; svc_helpers from here, whatever pytest's import mode.
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from svc_helpers import (API_KEY, EMBEDDED_MAX_UPLOAD, OTHER_KEY, REDIS_BASE, Proc, base_env, celery_worker,  # noqa: E402
                         claimed_redis_db, create_database, drop_database, free_port, uvicorn_server)

PG_ADMIN_URLS = [os.environ.get("TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
                 "postgresql://postgres@127.0.0.1:5432/test"]


def copy_repo(quick_repo, dest: Path) -> Path:
    shutil.copytree(quick_repo.root, dest)
    return dest


# ------------------------------------------------------------------------------------------------ PostgreSQL

@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """A URL to a maintenance database, from which test databases are created and dropped."""
    import psycopg

    errors = []
    for url in PG_ADMIN_URLS:
        try:
            with psycopg.connect(url, connect_timeout=5):
                return url
        except psycopg.Error as e:
            errors.append(f"{url}: {e}")
    raise RuntimeError("cannot reach PostgreSQL: " + "; ".join(errors))


@pytest.fixture(scope="session")
def postgres_url(postgres_admin):
    """A database of its own, created for this session and dropped after it."""
    name = f"hubscout_test_{uuid.uuid4().hex[:12]}"
    yield create_database(postgres_admin, name)
    drop_database(postgres_admin, name)


# ------------------------------------------------------------------------------------------------ Redis

@pytest.fixture(scope="session")
def redis_url():
    """An empty Redis db number, claimed for this session (other sessions may share the server), flushed after."""
    with claimed_redis_db(REDIS_BASE) as url:
        yield url


# ------------------------------------------------------------------------------------------------ services

@dataclass
class Service:
    base_url: str
    env: dict[str, str]
    log_dir: Path
    api: Proc
    worker: Proc | None = None
    procs: list[Proc] = field(default_factory=list)

    def settings(self):
        from service.settings import Settings

        e = self.env
        return Settings(database_url=e.get("DATABASE_URL"), celery_broker_url=e.get("CELERY_BROKER_URL"),
                        data_dir=e["HUBSCOUT_DATA_DIR"], repository_dir=e["HUBSCOUT_REPOSITORY_DIR"])

    def db(self):
        from service.db import Database

        return Database(self.settings())

    def restart_worker(self, name: str) -> Proc:
        self.worker = celery_worker(name, self.env, self.log_dir)
        self.procs.append(self.worker)
        return self.worker

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


FAST_RECOVERY = {
    # Seconds, not minutes, so the worker-loss tests finish quickly.
    "HUBSCOUT_HEARTBEAT_SECONDS": "0.5",
    "HUBSCOUT_STALE_AFTER_SECONDS": "4",
    "HUBSCOUT_BUILD_DEMO_ZOO": "false",
    "HUBSCOUT_LOG_LEVEL": "INFO",
    # Webhooks signed with a known key, retried after 0.2, 0.4, 0.8 s, given up after 4 attempts.
    "HUBSCOUT_WEBHOOK_SECRET": "test-webhook-secret",
    "HUBSCOUT_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "HUBSCOUT_WEBHOOK_MAX_ATTEMPTS": "4",
}


@pytest.fixture(scope="session")
def pg_service(quick_repo, postgres_url, redis_url, tmp_path_factory):
    """API (uvicorn) and one Celery worker, on PostgreSQL and Redis, sharing a storage folder."""
    tmp = tmp_path_factory.mktemp("pg-service")
    env = base_env(DATABASE_URL=postgres_url, CELERY_BROKER_URL=redis_url, HUBSCOUT_DATA_DIR=str(tmp / "data"),
                   HUBSCOUT_REPOSITORY_DIR=str(copy_repo(quick_repo, tmp / "zoo")),
                   HUBSCOUT_VISIBILITY_TIMEOUT="30", HUBSCOUT_API_KEYS=f"{API_KEY},{OTHER_KEY}", **FAST_RECOVERY)
    # The documented deployment step: the schema comes from `alembic upgrade head`.
    done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    port = free_port()
    worker = celery_worker("pg-worker", env, tmp)
    try:
        api = uvicorn_server("pg-api", env, tmp, port)
    except BaseException:
        worker.stop()
        raise
    svc = Service(f"http://127.0.0.1:{port}", env, tmp, api, worker, [worker, api])
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def pg_client(pg_service):
    """An HTTP client of the PostgreSQL/Redis service, sending its API key."""
    import httpx

    from svc_helpers import AUTH

    with httpx.Client(base_url=pg_service.base_url, timeout=60, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="session")
def embedded_service(quick_repo, tmp_path_factory):
    """`app.main.serve` with no configuration but its folders: SQLite, filesystem broker, local worker."""
    yield from _embedded(quick_repo, tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def shortlisting_service(quick_repo, tmp_path_factory):
    """The embedded service told to shortlist even the quick zoo: k = 1, no repository small enough to be ranked
    exhaustively."""
    yield from _embedded(quick_repo, tmp_path_factory.mktemp("shortlisting"), HUBSCOUT_SHORTLIST_K="1",
                         HUBSCOUT_EXHAUSTIVE_MAX_TEACHERS="0")


def _embedded(quick_repo, tmp: Path, **extra: str):
    from svc_helpers import wait_healthy

    env = base_env(HUBSCOUT_DATA_DIR=str(tmp / "var"), HUBSCOUT_REPOSITORY_DIR=str(copy_repo(quick_repo, tmp / "zoo")),
                   HUBSCOUT_MAX_UPLOAD_BYTES=str(EMBEDDED_MAX_UPLOAD), **FAST_RECOVERY, **extra)
    port = free_port()
    proc = Proc("embedded", [sys.executable, "-c", f"from app.main import serve; serve('127.0.0.1', {port})"],
                env, tmp)
    svc = Service(f"http://127.0.0.1:{port}", env, tmp, proc, None, [proc])
    try:
        wait_healthy(svc.base_url, proc, timeout=120)
        proc.wait_for_log(" ready.", timeout=120)  # the local Celery worker
    except BaseException:
        svc.stop()
        raise
    yield svc
    svc.stop()
