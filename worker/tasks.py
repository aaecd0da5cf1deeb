"""Celery tasks: thin adapters that run hubscout for a job and write what it returns.

A task gets only a job id. It claims the job row (app.jobs), runs the library with a progress callback that
writes into the row and stops the run when the job was cancelled or taken over, and stores the result together
with the job's final status in one transaction. Running a job's task again is harmless: a finished job is not
claimed again, and a result's id is fixed by its job's id.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from celery import signals
from sqlalchemy import select

from app import jobs, specs, webhooks
from app.db import Database, is_unavailable, utcnow
from app.models import (DatasetRow, JobKind, JobRow, JobStatus, RankingRow, SpecStatus, StudentRow, TeacherRow,
                        json_safe, result_id_for)
from app.queue import JobQueue
from app.settings import Settings, get_settings
from app.storage import LocalStorage
from worker.cache import DbOutputsCache, ScoreStore, SpecStore, exclusive, rank_cached, target_embedding
from worker.celery_app import celery_app
from worker.config import TASK_COMPUTE_SPEC, TASK_DELIVER_WEBHOOK, TASK_RUN_JOB

log = logging.getLogger("hubscout.worker")


# ------------------------------------------------------------------------------------------------- context

@dataclass
class Context:
    settings: Settings
    db: Database
    storage: LocalStorage
    queue: JobQueue


_ctx: Context | None = None
_ctx_pid: int | None = None
_ctx_lock = threading.Lock()


def context() -> Context:
    """Per-process services; rebuilt after a fork so no database connection is shared across processes."""
    global _ctx, _ctx_pid
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid():
            settings = get_settings()
            _ctx = Context(settings, Database(settings), LocalStorage(settings.storage_root), JobQueue(settings))
            _ctx_pid = os.getpid()
        return _ctx


def device_for(settings: Settings) -> str:
    import torch

    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


_embedder = None
_spec_store = SpecStore()


def reference_embedder(settings: Settings):
    """The shared reference model, loaded once per worker process (after any fork)."""
    global _embedder
    if _embedder is None or _ctx_pid != os.getpid():
        from hubscout.spec import ReferenceEmbedder

        _embedder = ReferenceEmbedder(device=device_for(settings))
    return _embedder


# ------------------------------------------------------------------------------------------------- progress

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


# ------------------------------------------------------------------------------------------------- the task

@celery_app.task(name=TASK_RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: str, recheck: bool = False) -> str:
    ctx = context()
    token = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    try:
        outcome = execute(ctx, job_id, token)
    except Exception as e:
        if not is_unavailable(e):
            raise
        # The database is down before the job could be claimed or after it could be recorded: try again later
        # (bounded; past that the job is still queued or running in the table, and the sweeps send it again).
        log.warning("job %s: the database is unavailable (%s); retrying in 5 s", job_id, e)
        raise self.retry(countdown=5, max_retries=60, exc=e)
    finally:
        # Whatever happened, a job that has now ended sends its callback (once: dispatch is conditional; a failure
        # to dispatch is logged, and the periodic sweep tries again).
        _dispatch_webhooks(ctx, [job_id])
    if outcome == "busy" and not recheck:
        # Delivered while another worker holds the job: most often the broker handing back the task of a worker
        # that just died (reject_on_worker_lost), whose heartbeat is still fresh. Look again once it would be
        # stale: then the claim takes the job over; if its worker is alive after all, this is skipped.
        settings = ctx.settings
        self.apply_async(args=[job_id], kwargs={"recheck": True},
                         countdown=settings.stale_after_seconds + 2 * settings.heartbeat_seconds)
    return outcome


@celery_app.task(name=TASK_DELIVER_WEBHOOK, bind=True, acks_late=True, reject_on_worker_lost=True,
                 ignore_result=True)
def deliver_webhook(self, job_id: str) -> str:
    """One attempt at a job's callback; on failure the task sends itself again after the backoff (app.webhooks
    counts the attempts on the job row and stops at webhook_max_attempts)."""
    ctx = context()
    outcome = webhooks.deliver(ctx.db, ctx.settings, job_id)
    if outcome.state == "retry":
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.state


def _dispatch_webhooks(ctx: Context, job_ids: list[str] | None = None) -> None:
    try:
        webhooks.dispatch(ctx.db, ctx.queue.enqueue_webhook, job_ids)
    except Exception:  # the periodic sweep tries again; a job's own outcome must not depend on this
        log.warning("could not dispatch webhooks", exc_info=True)


def execute(ctx: Context, job_id: str, token: str) -> str:
    claim = jobs.claim(ctx.db, ctx.settings, job_id, token)
    if claim is None:
        with ctx.db.session() as s:
            status = s.scalar(select(JobRow.status).where(JobRow.id == job_id))
        log.info("job %s skipped: %s", job_id, "running elsewhere" if status == JobStatus.RUNNING else status)
        return "busy" if status == JobStatus.RUNNING else "skipped"
    lost = threading.Event()
    beat = Heartbeat(ctx, claim, lost)
    beat.start()
    t0 = time.perf_counter()
    try:
        with ctx.db.session() as s:
            job = s.get(JobRow, job_id)
            dataset = s.get(DatasetRow, job.dataset_id) if job else None
        if job is None or dataset is None:
            raise RuntimeError(f"job {job_id} or its dataset vanished")
        log.info("job %s (%s) attempt %d started", job_id, job.kind, claim.attempt)
        report = Reporter(ctx, claim, lost)
        if job.kind == JobKind.RANKING:
            run_ranking(ctx, claim, job, dataset, report)
        elif job.kind == JobKind.DISTILLATION:
            run_distillation(ctx, claim, job, dataset, report)
        else:
            raise RuntimeError(f"unknown job kind {job.kind!r}")
        log.info("job %s succeeded in %.2f s", job_id, time.perf_counter() - t0)
        return "succeeded"
    except jobs.JobLost:
        log.info("job %s stopped: cancelled or taken over", job_id)
        return "lost"
    except Exception as e:
        if is_unavailable(e):
            raise  # not the job's fault: it stays running, and is taken over once its heartbeat goes stale
        log.exception("job %s failed", job_id)
        reason = _describe(e)
        _retry_db(ctx, lambda: jobs.fail(ctx.db, claim, reason))
        return "failed"
    finally:
        beat.stop()


def _retry_db(ctx: Context, write: Callable[[], object]):
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


def _describe(e: Exception) -> str:
    """The user's mistakes (bad data, unknown teacher) as their message; anything else with its type."""
    from hubscout.data import DatasetError
    from hubscout.teachers import TeacherError, TeacherNotFound

    if isinstance(e, TeacherNotFound):
        return f"unknown teacher: {e.args[0] if e.args else e}"
    if isinstance(e, (DatasetError, TeacherError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _load_dataset(ctx: Context, row: DatasetRow):
    from hubscout.data import Limits, load_dataset

    s = ctx.settings
    limits = Limits(max_samples=s.max_samples, max_classes=s.max_classes, max_side=s.max_image_side,
                    max_pixels=s.max_decoded_bytes)
    ds = load_dataset(ctx.storage.path(row.storage_key), name=row.name, limits=limits)
    # The stored file is the canonical form hashed at upload; hashing every image again per job is waste.
    ds.__dict__["sha256"] = row.sha256
    return ds


def run_ranking(ctx: Context, claim: jobs.Claim, job: JobRow, dataset: DatasetRow, report: Reporter) -> None:
    from hubscout.teachers import Repository

    params = job.params
    report(0.0, "loading dataset")
    ds = _load_dataset(ctx, dataset)
    repo = Repository(ctx.settings.repository_dir)
    teacher_ids = params.get("teacher_ids")
    if not teacher_ids:  # "every teacher": those this key sees, the shared catalogue and its own
        with ctx.db.session() as s:
            teacher_ids = [t for t in s.scalars(select(TeacherRow.id).where(TeacherRow.visible_to(job.owner))
                                                .order_by(TeacherRow.id)) if t in repo]
        if not teacher_ids:
            raise ValueError("the repository holds no teacher this key may rank")
    info = None
    k = params.get("shortlist")
    if k:
        candidates = list(teacher_ids)
        if len(candidates) > k:
            report(0.01, f"shortlisting {len(candidates)} teachers by specification")
            teacher_ids, info = shortlist_teachers(ctx, ds, candidates, k, job.owner)
            report(0.05, f"{len(teacher_ids)} of {len(candidates)} teachers to run")
    outputs = DbOutputsCache(ctx.db, ctx.storage, owner=job.owner)

    waited = []

    def wait_for_twin() -> None:
        report.check()
        if not waited:
            log.info("job %s waits for a ranking of the same data to finish its forward passes", job.id)
            waited.append(True)
        report(0.0, "waiting for a ranking of the same data to finish its forward passes")

    def lock():
        return exclusive(ctx.db, ctx.storage, f"rank:{job.owner}:{ds.sha256}", on_wait=wait_for_twin)

    ranking, n_scored = rank_cached(ds, repo, metrics=params.get("metrics") or ["ot"],
                                    teacher_ids=teacher_ids, top_k=params.get("top_k"),
                                    outputs_cache=outputs, scores=ScoreStore(ctx.db, owner=job.owner),
                                    device=device_for(ctx.settings), batch_size=ctx.settings.batch_size,
                                    on_progress=report.scaled(0.05 if info else 0.0, 0.95), compute_lock=lock)
    ranking.shortlist = info
    result = json_safe(ranking.to_dict())
    rid = result_id_for(job.id)

    def record() -> None:
        with ctx.db.session() as s:
            s.merge(RankingRow(id=rid, job_id=job.id, dataset_id=dataset.id, result=result))
            if not jobs.finish(s, claim, rid):
                s.rollback()
                raise jobs.JobLost(job.id)
            s.commit()

    _retry_db(ctx, record)
    log.info("ranking %s: %d teachers%s; scores stored for %d; outputs cached for %d, computed for %d", rid,
             len(ranking.entries), f" (shortlisted from {info['considered'] + len(info['unspecified_run'])})"
             if info else "", n_scored, outputs.hits, outputs.computed)


def shortlist_teachers(ctx: Context, ds, candidates: list[str], k: int, owner: str) -> tuple[list[str], dict]:
    """The candidates to run exactly, and the shortlist's description (``hubscout.spec.plan``): specifications
    from the database, the target embedded once per dataset content and owner."""
    from hubscout.spec import plan

    index, load_s = _spec_store.index(ctx.db, candidates)
    target, embed_cached = target_embedding(ctx.storage, ds, lambda: reference_embedder(ctx.settings), owner)
    run, info = plan(candidates, index, target, k)
    info.update(load_specs_s=round(load_s, 4), embed_target_cached=embed_cached)
    return run, info


# ------------------------------------------------------------------------------------------------- specifications

@celery_app.task(name=TASK_COMPUTE_SPEC, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def compute_spec(self, teacher_id: str) -> str:
    """Compute a pending teacher's specification and store it in the table (and its folder's spec.npz)."""
    return compute_spec_for(context(), teacher_id)


def compute_spec_for(ctx: Context, teacher_id: str) -> str:
    from hubscout.spec import load_specification, repo_cache_dir, save_specification, specification_for
    from hubscout.teachers import Repository, TeacherNotFound

    with ctx.db.session() as s:
        row = s.get(TeacherRow, teacher_id)
        status = row.spec_status if row is not None else None
        weights = row.weights_sha256 if row is not None else None
    if status != SpecStatus.PENDING:
        return "skipped"
    repo = Repository(ctx.settings.repository_dir)
    t0 = time.perf_counter()
    try:
        teacher = repo.get(teacher_id)
        if teacher.weights_sha256 != weights:
            return "skipped"  # replaced meanwhile; the next sync or upload asks again
        spec = load_specification(repo, teacher_id)
        if spec is None:
            spec = specification_for(teacher, reference_embedder(ctx.settings), device=device_for(ctx.settings),
                                     probe_cache_dir=repo_cache_dir(repo))
            try:
                save_specification(repo, spec)  # the CLI and a later sync read it from the folder
            except OSError as e:
                log.warning("could not write the specification of %s beside it: %s", teacher_id, e)
        data = spec.to_bytes()
    except TeacherNotFound:
        return "skipped"
    except Exception as e:
        log.exception("specification of teacher %s failed", teacher_id)
        with ctx.db.session() as s:
            row = s.get(TeacherRow, teacher_id)
            if row is not None and row.weights_sha256 == weights:
                row.spec_status, row.spec_error, row.spec_updated_at = SpecStatus.FAILED, _describe(e), utcnow()
                s.commit()
        return "failed"
    with ctx.db.session() as s:
        row = s.get(TeacherRow, teacher_id)
        # Only for the weights it was computed for: a teacher replaced meanwhile keeps waiting for its own.
        if row is None or row.weights_sha256 != spec.weights_sha256:
            return "skipped"
        specs.set_ready(row, data)
        s.commit()
    log.info("specification of teacher %s (%s, %d of %d classes described) stored in %.1f s", teacher_id,
             spec.source, len(spec.rows), spec.num_classes, time.perf_counter() - t0)
    return "ready"


def _zip_folder(folder: Path, dest: Path) -> None:
    # Files at the archive's root: `unzip -d DIR` then load_student(DIR).
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            if p.is_file():
                zf.write(p, p.name)


def run_distillation(ctx: Context, claim: jobs.Claim, job: JobRow, dataset: DatasetRow, report: Reporter) -> None:
    from hubscout.distill import DistillConfig, distill
    from hubscout.rank import relatedness_scores, weights_from_scores
    from hubscout.teachers import Repository

    params = job.params
    report(0.0, "loading dataset")
    ds = _load_dataset(ctx, dataset)
    repo = Repository(ctx.settings.repository_dir)
    ids = list(params.get("teacher_ids") or [])
    cfg = DistillConfig.from_dict(params["config"])
    device = device_for(ctx.settings)
    weights = relatedness = None
    if len(ids) > 1 and not cfg.ce_only:
        report(0.0, "weighting teachers by relatedness")
        scores = relatedness_scores(ds, repo, ids, cache=DbOutputsCache(ctx.db, ctx.storage, owner=job.owner),
                                    device=device)
        weights, relatedness = weights_from_scores(scores), dict(zip(ids, scores))
    student = distill(ds, repo, ids, cfg, weights=weights, relatedness=relatedness, device=device,
                      on_progress=report.scaled(0.05, 0.95), on_epoch=report.curves)
    report(0.96, "saving the student")
    sid = result_id_for(job.id)
    key = f"students/{sid}.zip"
    scratch = ctx.storage.tmp_path()
    try:
        scratch.mkdir(parents=True)
        folder = student.save(scratch / "student")
        archive = scratch / "student.zip"
        _zip_folder(folder, archive)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        size = archive.stat().st_size
        with ctx.storage.writer(key) as f, open(archive, "rb") as src:
            shutil.copyfileobj(src, f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row = StudentRow(id=sid, job_id=job.id, dataset_id=dataset.id, teacher_ids=ids, student_arch=cfg.student_arch,
                     config=json_safe(student.config_dict()), metrics=json_safe(student.metrics), archive_key=key,
                     archive_bytes=size, archive_sha256=digest)
    def record() -> None:
        with ctx.db.session() as s:
            s.merge(row)
            if not jobs.finish(s, claim, sid, curves=row.metrics.get("curves")):
                s.rollback()
                ctx.storage.delete(key)  # cancelled while saving: leave nothing behind
                raise jobs.JobLost(job.id)
            s.commit()

    _retry_db(ctx, record)


# ------------------------------------------------------------------------------------------------- recovery

def startup_sweep() -> None:
    """Before consuming: recover jobs whose worker died. The embedded local worker is the only worker, so
    every job still marked running is orphaned, and queued jobs are sent again because the filesystem broker
    loses a message taken by a killed worker (the claim makes duplicates harmless)."""
    ctx = context()
    embedded = ctx.settings.embedded
    try:
        n = jobs.sweep(ctx.db, ctx.settings, ctx.queue.enqueue, all_running=embedded, resend_queued=embedded)
        if n:
            log.warning("recovered %d job(s) left running by a lost worker", n)
        n = specs.request_due(ctx.db, ctx.settings, ctx.queue.enqueue_spec)
        if n:
            log.info("requested %d pending teacher specification(s)", n)
    except Exception:
        log.exception("startup sweep failed (is the database migrated?)")


class _Sweeper(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="stale-job-sweeper", daemon=True)

    def run(self) -> None:
        ctx = context()
        interval = max(1.0, ctx.settings.stale_after_seconds / 2)
        while True:
            time.sleep(interval)
            try:
                jobs.sweep(ctx.db, ctx.settings, ctx.queue.enqueue, resend_forgotten=True)
                specs.request_due(ctx.db, ctx.settings, ctx.queue.enqueue_spec)
            except Exception:
                log.warning("periodic sweep failed", exc_info=True)
            # Callbacks of jobs ended elsewhere (failed by a sweep) or whose enqueue was lost.
            _dispatch_webhooks(ctx)


@signals.celeryd_after_setup.connect
def _on_worker_setup(**_) -> None:
    # After logging is set up, before any task is consumed: the sweep cannot mistake a job this worker has
    # just claimed for an orphan.
    startup_sweep()


@signals.worker_ready.connect
def _on_worker_ready(**_) -> None:
    _Sweeper().start()
    ctx = context()
    # The device is not probed here: CUDA must not be initialised before a prefork pool forks.
    log.info("hubscout worker ready: device %s, database %s, storage %s, repository %s",
             ctx.settings.device or "auto (cuda when available)",
             ctx.db.engine.url.render_as_string(hide_password=True), ctx.settings.storage_root,
             ctx.settings.repository_dir)


@signals.worker_process_init.connect
def _on_process_init(**_) -> None:
    global _ctx
    if _ctx is not None:
        # A prefork child must neither use nor close the parent's pooled connections (closing would end the
        # parent's sessions on the server); it drops them silently and builds its own engine.
        _ctx.db.engine.dispose(close=False)
    _ctx = None
