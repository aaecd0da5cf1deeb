"""Redis and PostgreSQL restarting under a running job: the API answers 503 while a dependency is down, recovers by
itself, and every job it accepted still completes, once.

The machine's shared PostgreSQL and Redis are never touched: this module starts a private ``redis-server`` and a
private PostgreSQL cluster (``initdb`` in a temporary folder, ``pg_ctl`` on a free port) and restarts those.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from svc_helpers import (API_KEY, AUTH, ROOT, Proc, assert_problem, base_env, celery_worker, free_port, make_tiny_repo,
                         npz_bytes, uvicorn_server, wait_job)

from service.tables import JobRow, RankingRow, StudentRow

# A distillation that runs for seconds (not milliseconds), so an outage can be staged in the middle of it.
LONG_JOB = {"ce_only": True, "student_arch": "test_resnet", "epochs": 200, "min_steps": 0}


# ------------------------------------------------------------------------------------------------ private servers

def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


class PrivatePostgres:
    """A throw-away cluster. PostgreSQL refuses to run as root, so under root it runs as the postgres user."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hubscout-pg-"))
        self.data = self.dir / "data"
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()

    def _run(self, *cmd: str) -> None:
        if self.user:
            cmd = ("runuser", "-u", self.user, "--", *cmd)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        # fast: every session is cut off at once, as in a restart.
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """Without persistence, like a cache server restarted from scratch: every queued message is lost with it."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], {**os.environ}, self.log_dir)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.proc.alive():
                    raise RuntimeError(f"redis-server did not start:\n{self.proc.log()[-2000:]}")
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """API + one worker on a private PostgreSQL and a private Redis."""
    tmp = tmp_path_factory.mktemp("faults")
    pg = PrivatePostgres()
    rd = PrivateRedis(tmp)
    procs: list[Proc] = []
    try:
        make_tiny_repo(tmp / "zoo")
        env = base_env(DATABASE_URL=pg.url, CELERY_BROKER_URL=rd.url, HUBSCOUT_DATA_DIR=str(tmp / "data"),
                       HUBSCOUT_REPOSITORY_DIR=str(tmp / "zoo"), HUBSCOUT_BUILD_DEMO_ZOO="false",
                       HUBSCOUT_API_KEYS=API_KEY, HUBSCOUT_HEARTBEAT_SECONDS="0.5",
                       # Outages here last seconds: long enough a staleness bound that a job is not taken from
                       # its (live) worker meanwhile; queued jobs whose message a restart lost are sent again fast.
                       HUBSCOUT_STALE_AFTER_SECONDS="30", HUBSCOUT_RESEND_QUEUED_AFTER_SECONDS="3",
                       HUBSCOUT_VISIBILITY_TIMEOUT="60", HUBSCOUT_LOG_LEVEL="INFO")
        done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        procs.append(celery_worker("fault-worker", env, tmp))
        port = free_port()
        procs.append(uvicorn_server("fault-api", env, tmp, port))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=AUTH) as client:
            from hubscout.sources import demo_target

            r = client.post("/v1/datasets", files={"file": ("f.npz", npz_bytes(demo_target("footwear", 10, seed=0)))})
            assert r.status_code == 201, r.text
            yield {"client": client, "pg": pg, "redis": rd, "worker": procs[0], "api": procs[1], "env": env,
                   "dataset": r.json()["id"]}
    finally:
        for p in reversed(procs):
            p.stop()
        if rd.proc is not None:
            rd.proc.stop()
        pg.destroy()


def _submit(client: httpx.Client, path: str, body: dict) -> str:
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _running(client: httpx.Client, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > 0.05:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(job)


def _until(fn, timeout: float, what: str):
    """Poll ``fn`` until it returns something truthy: how the service is expected to come back, by itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout} s")


def _rows(env: dict, model, *where) -> int:
    from service.db import Database
    from service.settings import Settings

    db = Database(Settings(database_url=env["DATABASE_URL"], data_dir=env["HUBSCOUT_DATA_DIR"]))
    try:
        with db.session() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        db.dispose()


def _status(client: httpx.Client, path: str, **kw) -> int:
    try:
        return client.request(kw.pop("method", "GET"), path, **kw).status_code
    except httpx.TransportError:
        return 0


# ------------------------------------------------------------------------------------------------ tests

def test_redis_restart_during_a_job(stack):
    client, rd, ds = stack["client"], stack["redis"], stack["dataset"]
    long_job = _submit(client, "/v1/distillations", {"dataset_id": ds, **LONG_JOB})
    _running(client, long_job)
    # Queued behind it (one worker): its message is in Redis only, and the restart loses it.
    waiting = _submit(client, "/v1/rankings", {"dataset_id": ds})
    jobs_before = client.get("/v1/jobs").json()["total"]

    rd.kill()
    refused = client.post("/v1/rankings", json={"dataset_id": ds})
    assert assert_problem(refused, 503)["type"].endswith("/queue-unavailable")
    assert int(refused.headers["retry-after"]) > 0
    health = assert_problem(client.get("/healthz"), 503)
    assert health["failed"] == ["broker"]
    # What needs only the database still answers, and the refused job left nothing behind.
    assert client.get(f"/v1/jobs/{long_job}").json()["status"] == "running"
    assert client.get("/v1/jobs").json()["total"] == jobs_before

    rd.start()
    _until(lambda: client.get("/healthz").status_code == 200, 30, "healthy again")
    after = _until(lambda: (r := client.post("/v1/rankings", json={"dataset_id": ds})).status_code == 202 and r,
                   30, "jobs accepted again").json()["id"]

    for job_id in (long_job, waiting, after):
        job = wait_job(client, job_id, timeout=120, interval=0.3)
        assert job["status"] == "succeeded", job
    assert client.get(f"/v1/jobs/{long_job}").json()["attempts"] == 1
    assert _rows(stack["env"], StudentRow, StudentRow.job_id == long_job) == 1
    assert _rows(stack["env"], RankingRow, RankingRow.job_id.in_([waiting, after])) == 2
    assert _rows(stack["env"], JobRow, JobRow.status.in_(["queued", "running"])) == 0
    stack["worker"].wait_for_log("re-sent", timeout=1)  # the lost message was made good by the sweep


def test_postgres_restart_during_a_job(stack):
    client, pg, ds = stack["client"], stack["pg"], stack["dataset"]
    long_job = _submit(client, "/v1/distillations", {"dataset_id": ds, **LONG_JOB})
    _running(client, long_job)
    waiting = _submit(client, "/v1/rankings", {"dataset_id": ds, "metrics": ["leep"]})

    pg.stop()
    down_since = time.monotonic()
    try:
        for method, path, kw in (("GET", f"/v1/jobs/{long_job}", {}), ("GET", "/v1/jobs", {}),
                                 ("POST", "/v1/rankings", {"json": {"dataset_id": ds}}),
                                 ("GET", f"/v1/datasets/{ds}", {})):
            body = assert_problem(client.request(method, path, **kw), 503)
            assert body["type"].endswith("/database-unavailable"), body
        assert assert_problem(client.get("/healthz"), 503)["failed"] == ["database"]
        time.sleep(max(0.0, 3 - (time.monotonic() - down_since)))  # several of the job's writes must fail
    finally:
        pg.start()
    _until(lambda: _status(client, f"/v1/jobs/{long_job}") == 200, 30, "the API answering again")

    for job_id in (long_job, waiting):
        job = wait_job(client, job_id, timeout=120, interval=0.3)
        assert job["status"] == "succeeded", job
    assert _rows(stack["env"], StudentRow, StudentRow.job_id == long_job) == 1
    assert _rows(stack["env"], RankingRow, RankingRow.job_id == waiting) == 1
    assert _rows(stack["env"], JobRow, JobRow.status.in_(["queued", "running"])) == 0
    # The outage did reach the running job, which carried on.
    assert f"job {long_job}: progress not recorded, the database is unavailable" in stack["worker"].log()
    assert client.get(f"/v1/jobs/{long_job}").json()["attempts"] == 1
