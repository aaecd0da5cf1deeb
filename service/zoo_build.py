"""The demo repository's first build, in the background: the API answers at once and says how far the build is.

``hubscout serve`` on a fresh checkout used to answer nothing for minutes while it trained the demo teachers. Now
``start`` runs the build in a thread of the API process (the small teachers are restored from their committed
weights, or trained in worker processes: see ``hubscout.zoo``), this module keeps its progress, ``/healthz`` and
``/v1/info`` report it, and the routes that need teachers answer 503 with Retry-After until it is done
(``app.routes.teachers_ready``). It lives in ``service/`` because ``service.teacher_sync.ensure_repository``
starts it.

The teachers' specifications come after the repository is ready, in the same thread at a lower priority: the demo
zoo (at most ``exhaustive_max_teachers``) is ranked exhaustively, so no ranking needs them, and on the first start
of 2026-12-01 computing them before "ready" kept the first ranking waiting 12.7 minutes.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from service.settings import Settings

log = logging.getLogger("hubscout.repository")


@dataclass
class BuildProgress:
    """One build of the demo repository: ``state`` is building, ready or failed."""

    state: str = "building"
    built: int = 0
    total: int = 0
    current: str | None = None
    error: str | None = None
    started: float = 0.0
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        return {"state": self.state, "built": self.built, "total": self.total, "current": self.current,
                "error": self.error, "elapsed_s": round(end - self.started, 1)}

    def retry_after_s(self) -> int:
        """A guess from the pace so far: the time the remaining teachers would take, within 5 s .. 2 min."""
        elapsed = time.monotonic() - self.started
        if self.built == 0 or self.total <= self.built:
            return 10
        left = elapsed / self.built * (self.total - self.built)
        return int(min(120, max(5, left)))


_lock = threading.Lock()
_builds: dict[str, BuildProgress] = {}  # resolved repository folder -> its build in this process


def progress(settings: Settings) -> BuildProgress | None:
    """The build of ``settings``' repository that this process runs or ran (None: none, the folder was there)."""
    with _lock:
        return _builds.get(str(settings.repository_dir.resolve()))


def is_building(settings: Settings) -> bool:
    p = progress(settings)
    return p is not None and p.state == "building"


def start(settings: Settings, build_fn=None, join: bool = False, after=None,
          wait_for: threading.Event | None = None,
          then: Callable[[Path], Any] | None = None) -> BuildProgress:
    """Build the missing repository in a background thread and return its progress (the one under way if
    there is one). ``build_fn(tmp_dir, on_teacher)`` builds the teachers (default: the settings' demo zoo);
    ``after(root)`` runs once the repository is in place (the API mirrors it into its table), still "building".
    ``then(root)`` runs once it is "ready", in the same thread at a lower priority: the specifications
    (default: into the teachers' folders; the API also stores them in its table, ``service.specs.compute_local``).
    ``wait_for``: the build starts when it is set (at most 30 s later): importing torch in this thread competes
    with the server's own start-up for the interpreter, so it waits until the server answers."""
    root = str(settings.repository_dir.resolve())
    with _lock:
        p = _builds.get(root)
        if p is not None and p.state == "building":
            return p
        p = _builds[root] = BuildProgress(started=time.monotonic())
    thread = threading.Thread(target=_run, args=(settings, p, build_fn or _demo_zoo(settings), after, wait_for,
                                                 then or _folder_specifications(settings)),
                              name="demo-zoo-build", daemon=True)
    thread.start()
    if join:
        thread.join()
    return p


def _demo_zoo(settings: Settings):
    def build(tmp: Path, on_teacher) -> Any:
        from hubscout.zoo import build_demo_zoo

        return build_demo_zoo(tmp, quick=settings.demo_zoo_quick, on_teacher=on_teacher,
                              workers=settings.zoo_build_workers, restore=not settings.demo_zoo_train)
    return build


def _folder_specifications(settings: Settings) -> Callable[[Path], int]:
    def specify(root: Path) -> int:
        from hubscout.spec import ensure_specifications
        from hubscout.teachers import Repository

        return ensure_specifications(Repository(root), device=settings.device)
    return specify


@contextmanager
def background_priority() -> Iterator[None]:
    """This thread at a lower CPU priority (Linux: nice is per thread) and torch on one thread, so that work
    nobody waits for yields the cores to the workers' jobs (a first ranking above all)."""
    import torch

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except (AttributeError, OSError):  # not Linux, or not allowed: run at the normal priority
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(settings: Settings, p: BuildProgress, build_fn, after, wait_for, then) -> None:
    if wait_for is not None:
        wait_for.wait(30)
    from service import teacher_sync

    root = settings.repository_dir.resolve()

    def on_teacher(teacher_id: str, built: int, total: int, seconds: float) -> None:
        with _lock:
            p.built, p.total, p.current = built, total, teacher_id
        log.info("demo zoo: built teacher %s (%d/%d) in %.1f s", teacher_id, built, total, seconds)

    built_here = False
    try:
        with teacher_sync.file_lock(settings.data_dir.resolve() / "repository.lock"):
            if not root.exists():
                built_here = True
                _remove_stale_builds(root)
                tmp = root.parent / f".{root.name}.building-{uuid.uuid4().hex[:8]}"
                log.info("teacher repository %s is missing: building the %sdemo zoo there in the background "
                         "(first start); the API answers meanwhile", root, "quick " if settings.demo_zoo_quick else "")
                try:
                    build_fn(tmp, on_teacher)
                    tmp.rename(root)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        if after is not None:
            after(root)
        with _lock:
            p.state, p.current, p.finished = "ready", None, time.monotonic()
        log.info("demo zoo ready at %s: %d teachers in %.1f s", root, p.built, p.finished - p.started)
    except Exception as e:  # the API stays up and says why there are no teachers
        log.exception("building the demo zoo failed")
        with _lock:
            p.state, p.error, p.finished = "failed", f"{type(e).__name__}: {e}"[:500], time.monotonic()
        return
    if not built_here:  # another process built it and computes its specifications
        return
    t0 = time.monotonic()
    try:
        with background_priority():
            n = then(root)
        log.info("demo zoo: specifications of %s teacher(s) computed in %.1f s, after the repository was ready",
                 n, time.monotonic() - t0)
    except Exception:  # not fatal: the teachers are ranked without them; the workers' sweep computes the rest
        log.warning("computing the demo zoo's specifications failed; the workers will compute them", exc_info=True)


def _remove_stale_builds(root: Path) -> None:
    # Under the lock no other build can be running: any half-built folder is left by a killed process.
    for stale in root.parent.glob(f".{root.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)

