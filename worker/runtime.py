"""A worker process's runtime: its services (one per process, rebuilt after a fork), the device, the shared
reference model, and what a running job reports through (progress, heartbeat, cancellation)."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from hubscout.data import DatasetError, Limits, load_dataset as read_dataset
from service import jobs
from service.container import Services
from service.db import is_unavailable
from service.settings import Settings, get_settings
from service.tables import DatasetRow, json_safe

log = logging.getLogger("hubscout.worker")

#: The worker's name for the process's services (the API's ``app.routes.ServicesDep``): one container.
Context = Services

_ctx: Context | None = None
_ctx_pid: int | None = None
_ctx_lock = threading.Lock()


def context() -> Context:
    """Per-process services; rebuilt after a fork so no database connection is shared across processes."""
    global _ctx, _ctx_pid
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid():
            _ctx = Context.from_settings(get_settings())
            _ctx_pid = os.getpid()
        return _ctx


def forget_context() -> None:
    """In a freshly forked child: drop the parent's services without closing them."""
    global _ctx
    if _ctx is not None:
        # A prefork child must neither use nor close the parent's pooled connections (closing would end the
        # parent's sessions on the server); it drops them silently and builds its own engine.
        _ctx.db.engine.dispose(close=False)
    _ctx = None


def device_for(settings: Settings) -> str:
    import torch

    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


_embedder = None


def reference_embedder(settings: Settings):
    """The shared reference model, loaded once per worker process (after any fork)."""
    global _embedder
    if _embedder is None or _ctx_pid != os.getpid():
        from hubscout.spec import ReferenceEmbedder

        _embedder = ReferenceEmbedder(device=device_for(settings))
    return _embedder


class Reporter:
    """``on_progress`` for the library: throttled writes into the job row, and the cancellation check."""

    def __init__(self, ctx: Context, claim: jobs.Claim, lost: threading.Event, min_interval: float = 0.5):
        self.ctx, self.claim, self.lost, self.min_interval = ctx, claim, lost, min_interval
        self._last = 0.0
        self._curves: dict | None = None  # newer than what the row holds

    def __call__(self, fraction: float, message: str) -> None:
        self.check()
        now = time.monotonic()
        if now - self._last < self.min_interval and fraction < 1.0:
            return
        self._last = now
        curves, self._curves = self._curves, None
        try:
            jobs.progress(self.ctx.db, self.claim, fraction, message, curves=curves)
        except Exception as e:
            if not is_unavailable(e):
                raise
            # The database is restarting: progress is a nicety, the work goes on; the result is written (with
            # retries) once it is back.
            log.warning("job %s: progress not recorded, the database is unavailable: %s", self.claim.job_id, e)

    def curves(self, curves: dict) -> None:
        """``on_epoch`` for distillation: the curves go out with the next progress write."""
        self._curves = json_safe(curves)

    def check(self) -> None:
        """Raise JobLost when the job was cancelled or taken over."""
        if self.lost.is_set():
            raise jobs.JobLost(self.claim.job_id)

    def scaled(self, lo: float, hi: float) -> Callable[[float, str], None]:
        return lambda f, m: self(lo + (hi - lo) * f, m)


class Heartbeat(threading.Thread):
    """Proves this worker alive while the library computes between progress reports (a long epoch, a big
    forward pass); notices cancellation even when no progress is reported."""

    def __init__(self, ctx: Context, claim: jobs.Claim, lost: threading.Event):
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.ctx, self.claim, self.lost = ctx, claim, lost
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.ctx.settings.heartbeat_seconds):
            try:
                if not jobs.heartbeat(self.ctx.db, self.claim):
                    self.lost.set()
                    return
            except Exception as e:
                log.warning("heartbeat for job %s failed: %s", self.claim.job_id, e,
                            exc_info=not is_unavailable(e))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def retry_db(ctx: Context, write: Callable[[], object]):
    """Run a database write, retrying while the database is unreachable (a restart) for up to
    ``db_retry_seconds``: a finished job's result must not be lost to a short outage."""
    deadline = time.monotonic() + ctx.settings.db_retry_seconds
    delay = 0.5
    while True:
        try:
            return write()
        except Exception as e:
            if not is_unavailable(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable while recording a result (%s); retrying in %.1f s", e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def describe(e: Exception) -> str:
    """The user's mistakes (bad data, unknown teacher) as their message; anything else with its type."""
    from hubscout.teachers import TeacherError, TeacherNotFound  # torch: the worker loads it with its first job

    if isinstance(e, TeacherNotFound):
        return f"unknown teacher: {e.args[0] if e.args else e}"
    if isinstance(e, (DatasetError, TeacherError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


def load_dataset(ctx: Context, row: DatasetRow):
    s = ctx.settings
    limits = Limits(max_samples=s.max_samples, max_classes=s.max_classes, max_side=s.max_image_side,
                    max_pixels=s.max_decoded_bytes)
    ds = read_dataset(ctx.storage.path(row.storage_key), name=row.name, limits=limits)
    # The stored file is the canonical form hashed at upload; hashing every image again per job is waste.
    ds.__dict__["sha256"] = row.sha256
    return ds
