"""Celery tasks: thin adapters that run hubscout for a job and write what it returns.

A task gets only a job id. It claims the job row (service.jobs), runs the library with a progress callback that
writes into the row and stops the run when the job was cancelled or taken over, and stores the result together
with the job's final status in one transaction. Running a job's task again is harmless: a finished job is not
claimed again, and a result's id is fixed by its job's id.

The tasks and the worker's signals only; what they run is in worker.execution (a job), worker.ranking,
worker.distillation, worker.specification, worker.recovery (sweeps) and worker.runtime.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

from celery import signals

from service import webhooks
from service.celery_config import TASK_COMPUTE_SPEC, TASK_DELIVER_WEBHOOK, TASK_RUN_JOB
from service.db import is_unavailable
from worker.celery_app import celery_app
from worker.execution import execute
from worker.recovery import Sweeper, dispatch_webhooks, startup_sweep
from worker.runtime import context, forget_context
from worker.specification import compute_spec_for

log = logging.getLogger("hubscout.worker")


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
        dispatch_webhooks(ctx, [job_id])
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
    """One attempt at a job's callback; on failure the task sends itself again after the backoff (service.webhooks
    counts the attempts on the job row and stops at webhook_max_attempts)."""
    ctx = context()
    outcome = webhooks.deliver(ctx.db, ctx.settings, job_id)
    if outcome.state == "retry":
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.state


@celery_app.task(name=TASK_COMPUTE_SPEC, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def compute_spec(self, teacher_id: str) -> str:
    """Compute a pending teacher's specification and store it in the table (and its folder's spec.npz)."""
    return compute_spec_for(context(), teacher_id)


@signals.celeryd_after_setup.connect
def _on_worker_setup(**_) -> None:
    # After logging is set up, before any task is consumed: the sweep cannot mistake a job this worker has
    # just claimed for an orphan.
    startup_sweep()


@signals.worker_ready.connect
def _on_worker_ready(**_) -> None:
    Sweeper().start()
    ctx = context()
    # The device is not probed here: CUDA must not be initialised before a prefork pool forks.
    log.info("hubscout worker ready: device %s, database %s, storage %s, repository %s",
             ctx.settings.device or "auto (cuda when available)",
             ctx.db.engine.url.render_as_string(hide_password=True), ctx.settings.storage_root,
             ctx.settings.repository_dir)


@signals.worker_process_init.connect
def _on_process_init(**_) -> None:
    forget_context()
