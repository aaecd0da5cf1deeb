"""Running one job: claim its row, keep a heartbeat, run it by kind, record a failure."""
from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from service import jobs
from service.db import is_unavailable
from service.tables import DatasetRow, JobKind, JobRow, JobStatus
from worker.distillation import run_distillation
from worker.ranking import run_ranking
from worker.runtime import Context, Heartbeat, Reporter, describe, retry_db

log = logging.getLogger("hubscout.worker")


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
        reason = describe(e)
        retry_db(ctx, lambda: jobs.fail(ctx.db, claim, reason))
        return "failed"
    finally:
        beat.stop()
