"""The embedded default's worker: a real Celery worker process started (and restarted) next to the API.

It runs ``celery -A worker.celery_app worker --pool=solo`` on the filesystem broker under the data dir, so jobs
stay asynchronous and survive an API restart, without any service to install. If it dies it is started again;
its startup sweep puts the job it was running back in the queue.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.db import ROOT
from service.settings import Settings

log = logging.getLogger("hubscout.local_worker")


def _die_with_parent() -> None:
    # Linux: if `serve` is killed outright, the worker must not linger holding the job it runs.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalWorker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
                f"--loglevel={self.settings.log_level.upper()}", "-n", f"local-{os.getpid()}@%h"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The worker package must import even when hubscout is installed without the service packages mapped.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        # Absolute folders: the worker must find the very files the API resolved, whatever its working directory.
        s = self.settings
        env["HUBSCOUT_DATA_DIR"] = str(s.data_dir.resolve())
        env["HUBSCOUT_STORAGE_DIR"] = str(s.storage_root)
        env["HUBSCOUT_REPOSITORY_DIR"] = str(s.repository_dir.resolve())
        return env

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="local-celery-worker", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            log.info("starting the local Celery worker: %s", " ".join(self.command()))
            # preexec_fn: the supervising thread lives as long as `serve`, which PDEATHSIG relies on.
            self._proc = subprocess.Popen(self.command(), env=self._env(),
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            rc = self._proc.wait()
            if self._stopping.is_set():
                break
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            log.warning("the local Celery worker exited with code %s; restarting in %.0f s", rc, backoff)
            self._stopping.wait(backoff)

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # warm shutdown: finish the current task if it is quick
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the local Celery worker did not stop in %.0f s; killing it (its job will be "
                            "re-queued at the next start)", timeout)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None
