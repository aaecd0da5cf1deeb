"""The job state machine, shared by the API (create, cancel, sweep) and the workers (claim, progress, finish).

Every transition is one conditional UPDATE, so two workers, a worker and a sweeper, or a worker and a cancel
request never both win: a worker owns a job through a per-attempt ``worker`` token, and every write it makes
is conditioned on still holding that token while the job is running. A cancelled or re-queued job therefore
silently stops accepting writes from the worker that lost it.

    queued --claim--> running --finish--> succeeded
      |                  |------fail-----> failed
      |                  '--worker lost--> queued again (at most job_max_attempts claims), then failed
      '--cancel (while queued or running)--> cancelled
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from service.db import Database, utcnow
from service.settings import Settings
from service.tables import JobRow, JobStatus

log = logging.getLogger("hubscout.jobs")

Enqueue = Callable[[str], str]  # job id -> task id


class JobLost(Exception):
    """The job was cancelled, or taken over after this worker was presumed dead: stop without writing."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    attempt: int


def _stale_cutoff(settings: Settings) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=settings.stale_after_seconds)


def claim(db: Database, settings: Settings, job_id: str, token: str) -> Claim | None:
    """Take ``job_id`` for this attempt if it is queued (or running with a dead worker). None: someone else has
    it, it is finished or cancelled, or it has used up its attempts (then it is marked failed)."""
    now = utcnow()
    claimable = or_(JobRow.status == JobStatus.QUEUED,
                    and_(JobRow.status == JobStatus.RUNNING, JobRow.heartbeat_at < _stale_cutoff(settings)))
    with db.session() as s:
        res = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, claimable, JobRow.attempts < settings.job_max_attempts)
            .values(status=JobStatus.RUNNING, attempts=JobRow.attempts + 1, worker=token, heartbeat_at=now,
                    started_at=func.coalesce(JobRow.started_at, now), message="started")
        )
        if res.rowcount == 1:
            s.commit()
            attempt = s.scalar(select(JobRow.attempts).where(JobRow.id == job_id))
            return Claim(job_id, token, int(attempt or 1))
        # Delivered again after too many lost workers: fail it rather than let it bounce for ever.
        exhausted = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, claimable, JobRow.attempts >= settings.job_max_attempts)
            .values(status=JobStatus.FAILED, finished_at=now,
                    error=f"gave up after {settings.job_max_attempts} attempts: the worker was lost each time")
        )
        s.commit()
        if exhausted.rowcount:
            log.warning("job %s failed: attempts exhausted", job_id)
    return None


def _owned(claim_: Claim):
    return and_(JobRow.id == claim_.job_id, JobRow.status == JobStatus.RUNNING, JobRow.worker == claim_.token)


def heartbeat(db: Database, claim_: Claim) -> bool:
    with db.session() as s:
        n = s.execute(update(JobRow).where(_owned(claim_)).values(heartbeat_at=utcnow())).rowcount
        s.commit()
    return n == 1


def progress(db: Database, claim_: Claim, fraction: float, message: str, curves: dict | None = None) -> None:
    """``curves``: a distillation's training curves so far (kept as they were when not given)."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    values = dict(progress=fraction, message=message[:500], heartbeat_at=utcnow())
    if curves is not None:
        values["curves"] = curves
    with db.session() as s:
        n = s.execute(update(JobRow).where(_owned(claim_)).values(**values)).rowcount
        s.commit()
    if n != 1:
        raise JobLost(claim_.job_id)


def finish(s: Session, claim_: Claim, result_id: str, curves: dict | None = None) -> bool:
    """Mark succeeded inside the caller's transaction, which also writes the result: both or neither.
    ``curves``: a distillation's complete training curves."""
    values = dict(status=JobStatus.SUCCEEDED, progress=1.0, message="done", result_id=result_id,
                  finished_at=utcnow(), heartbeat_at=utcnow())
    if curves is not None:
        values["curves"] = curves
    n = s.execute(update(JobRow).where(_owned(claim_)).values(**values)).rowcount
    return n == 1


def fail(db: Database, claim_: Claim, error: str) -> None:
    with db.session() as s:
        s.execute(update(JobRow).where(_owned(claim_)).values(
            status=JobStatus.FAILED, error=error[:4000], message="failed", finished_at=utcnow()))
        s.commit()


def cancel(db: Database, job_id: str) -> bool:
    """True if the job was queued or running and is now cancelled."""
    with db.session() as s:
        n = s.execute(update(JobRow).where(
            JobRow.id == job_id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        ).values(status=JobStatus.CANCELLED, message="cancelled", finished_at=utcnow())).rowcount
        s.commit()
    return n == 1


def requeue(db: Database, settings: Settings, job_id: str, enqueue: Enqueue, *, only_stale: bool = True) -> str:
    """Send a job whose worker is gone back to the queue, or fail it when it has no attempts left.
    Returns the new status, or '' when the job was not (or no longer) in a state to be swept."""
    now = utcnow()
    cond = [JobRow.id == job_id, JobRow.status == JobStatus.RUNNING]
    if only_stale:
        cond.append(or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < _stale_cutoff(settings)))
    with db.session() as s:
        n = s.execute(update(JobRow).where(*cond, JobRow.attempts >= settings.job_max_attempts).values(
            status=JobStatus.FAILED, finished_at=now, message="failed",
            error=f"gave up after {settings.job_max_attempts} attempts: the worker was lost each time")).rowcount
        if n:
            s.commit()
            log.warning("job %s failed: its worker was lost and no attempt is left", job_id)
            return JobStatus.FAILED
        n = s.execute(update(JobRow).where(*cond).values(
            status=JobStatus.QUEUED, worker=None, message="re-queued: its worker was lost")).rowcount
        s.commit()
    if not n:
        return ""
    log.warning("job %s re-queued: its worker was lost", job_id)
    resend(db, job_id, enqueue)
    return JobStatus.QUEUED


def resend(db: Database, job_id: str, enqueue: Enqueue) -> None:
    task_id = enqueue(job_id)
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(task_id=task_id, enqueued_at=utcnow()))
        s.commit()


def sweep(db: Database, settings: Settings, enqueue: Enqueue, *, job_ids: list[str] | None = None,
          all_running: bool = False, resend_queued: bool = False, resend_forgotten: bool = False,
          limit: int = 100) -> int:
    """Recover jobs whose worker died (heartbeat older than ``stale_after_seconds``; with ``all_running``, every
    running job — only right for the one local worker, at its start). ``resend_queued`` sends every queued job
    again, for brokers that lose a message taken by a killed worker; ``resend_forgotten`` only those sent longer
    than ``resend_queued_after_seconds`` ago, for a broker that restarted without its messages. The claim makes
    a duplicate harmless."""
    with db.session() as s:
        q = select(JobRow.id).where(JobRow.status == JobStatus.RUNNING)
        if not all_running:
            q = q.where(or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < _stale_cutoff(settings)))
        if job_ids is not None:
            q = q.where(JobRow.id.in_(job_ids))
        stale = list(s.scalars(q.limit(limit)))
        queued: list[str] = []
        if resend_queued or resend_forgotten:
            q = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED)
            if not resend_queued:
                cutoff = utcnow() - dt.timedelta(seconds=settings.resend_queued_after_seconds)
                q = q.where(func.coalesce(JobRow.enqueued_at, JobRow.created_at) < cutoff)
            queued = list(s.scalars(q.order_by(JobRow.created_at).limit(limit)))
    n = 0
    for job_id in stale:
        try:
            n += bool(requeue(db, settings, job_id, enqueue, only_stale=not all_running))
        except Exception:  # a broker hiccup must not break the request that triggered the sweep
            log.exception("could not re-queue job %s", job_id)
    sent = 0
    for job_id in queued:
        try:
            resend(db, job_id, enqueue)
            sent += 1
        except Exception:
            log.warning("could not re-send job %s", job_id, exc_info=True)
            break  # the broker is down: the next sweep tries again
    if sent and not resend_queued:
        log.warning("re-sent %d job(s) queued for more than %.0f s (the broker may have lost them)", sent,
                    settings.resend_queued_after_seconds)
    return n
