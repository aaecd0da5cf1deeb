"""Shared helpers of the service tests: processes, ports, payloads, job polling."""
from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"succeeded", "failed", "cancelled"}
EMBEDDED_MAX_UPLOAD = 2_000_000  # the embedded test server's upload limit
PROBLEM_JSON = "application/problem+json"
REDIS_BASE = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379"
# The keys of the distributed test servers (which, like any deployment with a broker, must have keys).
API_KEY = "test-key-0d5b8f3c9a7e41d2b6f0c8e4a1d3"
OTHER_KEY = "test-key-other-7c2e9a4f1b8d6e3a5c0f9b2d"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_KEY}"}
ADMIN_KEY = "test-admin-key-4e1b7a9c2d5f8e0b3a6c9d1f"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any service configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("HUBSCOUT_") or k in ("DATABASE_URL", "CELERY_BROKER_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Proc:
    """A subprocess with its output in a log file, stopped by pid (never by name)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        # Own process group: a kill reaches its children (the embedded server's local worker) too.
        self.popen = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_log(self, needle: str, timeout: float, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log()[since:]:
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: no {needle!r} in {timeout} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        try:  # whatever the group left behind (a local worker) goes too
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def celery_worker(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    proc = Proc(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                       "-c", "1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
                       "-n", f"{name}-{os.getpid()}@%h"], env, log_dir)
    proc.wait_for_log(" ready.", timeout=120)
    return proc


def uvicorn_server(name: str, env: dict[str, str], log_dir: Path, port: int) -> Proc:
    proc = Proc(name, [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
                env, log_dir)
    wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
    return proc


def wait_healthy(base_url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{proc.name} not healthy in {timeout} s:\n{proc.log()[-4000:]}")


def tiny_weights(arch: str = "test_resnet", classes: int = 3, channels: int = 1, seed: int = 0) -> bytes:
    """A random model's state dict as safetensors bytes: a valid teacher upload."""
    import torch
    from safetensors.torch import save

    from hubscout.teachers import build_model

    torch.manual_seed(seed)
    model = build_model(arch, classes, channels)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def make_tiny_repo(root: Path, n: int = 3):
    """A repository of ``n`` random 3-class ``test_resnet`` teachers (32 px, grey): ``tiny-0`` ... ``tiny-{n-1}``."""
    import torch

    from hubscout.teachers import InputConfig, Repository, build_model

    repo = Repository(root)
    for i in range(n):
        torch.manual_seed(i)
        repo.add(arch="test_resnet", weights=build_model("test_resnet", 3, 1).state_dict(), labels=["x", "y", "z"],
                 name=f"tiny {i}", input=InputConfig(32, 1, (0.5,), (0.5,)), teacher_id=f"tiny-{i}")
    return repo


def toy_dataset(n: int = 12, seed: int = 0):
    """``n`` random 16-px grey images in three classes (ant, bee, cow)."""
    from hubscout.data import Dataset

    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 255, (n, 16, 16, 1), dtype=np.uint8), np.arange(n) % 3, ["ant", "bee", "cow"],
                   name="toy")


def npz_bytes(ds) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=ds.images, labels=ds.labels, classes=np.array(ds.classes, dtype=str))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def raw_post(base_url: str, path: str, headers: dict[str, str], chunks, chunked: bool = False
             ) -> tuple[httpx.Response, int]:
    """POST over a bare socket, sending ``chunks`` until the server answers: a client that does not stop at the
    limit. Returns the server's answer, however much of the body it read, and the body bytes sent before it."""
    u = urlsplit(base_url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    try:
        sock.sendall((head + "\r\n").encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came before the end of the body
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        hdrs = dict(line.split(": ", 1) for line in lines[1:])
        length = int(next((v for k, v in hdrs.items() if k.lower() == "content-length"), "0"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
        return httpx.Response(int(lines[0].split()[1]), headers=hdrs, content=body), sent
    finally:
        sock.close()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180, until=FINAL, interval: float = 0.05) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in until:
            return job
        time.sleep(interval)
    raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    body = r.json()
    for key in ("type", "title", "status", "detail", "instance"):
        assert key in body, body
    assert body["status"] == status
    return body


def create_database(admin: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


@contextmanager
def claimed_redis_db(base_url: str) -> Iterator[str]:
    """An empty Redis db number, claimed (other sessions may share the server) and flushed after."""
    import random

    import redis

    claim = f"hubscout-test-claim:{uuid.uuid4().hex}"
    dbs = list(range(1, 16))
    random.shuffle(dbs)
    for db in dbs:
        r = redis.Redis.from_url(f"{base_url}/{db}")
        if r.dbsize() == 0 and r.set("hubscout-test-claim", claim, nx=True, ex=6 * 3600):
            break
        r.close()
    else:
        raise RuntimeError("no empty Redis db among 1..15")
    try:
        yield f"{base_url}/{db}"
    finally:
        r.flushdb()
        r.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class PeakRSS:
    """Samples a process's RSS every few milliseconds in a thread: ``peak`` is the most seen since ``__enter__``
    (a request's transient allocation, not only what it leaves behind)."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.pid, self.interval = pid, interval
        self.start = self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def drop_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------------------------ webhooks

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    answered: int


class Receiver:
    """A real HTTP endpoint on a free loopback port, in a thread: records every POST and answers with
    ``statuses`` in turn (200 once they run out)."""

    def __init__(self, statuses: tuple[int, ...] = ()):
        self.requests: list[Received] = []
        self._statuses = list(statuses)
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._cond:
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.monotonic(), status))
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def wait_for(self, n: int, timeout: float = 60) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} webhook call(s) in {timeout} s")
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
