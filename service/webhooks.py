"""Webhooks: a job's ``callback_url`` gets one signed JSON POST when the job ends.

The job row is the outbox. A job created with a callback is ``waiting``; once it is final, :func:`dispatch` moves
it to ``pending`` with one conditional UPDATE (so only one of several callers enqueues it) and sends a Celery
task; :func:`deliver`, run by that task, tries one POST per call and says whether to retry and when. Attempts are
counted and claimed on the row, and a 2xx answer is recorded as ``delivered``, after which nothing sends it
again. The worker dispatches when a job ends, the API when it cancels one, and every worker's periodic sweep
catches the rest (a job failed by the stale-job sweep, an enqueue lost to a broker outage).

If a worker dies between a 2xx answer and recording it, the task is redelivered and the receiver may get the
event twice: ``X-Hubscout-Delivery`` (the job id) lets it recognise the repeat.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select, update

from service.db import Database, utcnow
from service.events import JobEvent, JobEventJob
from service.settings import Settings
from service.tables import CallbackState, JobRow, JobStatus

log = logging.getLogger("hubscout.webhooks")

SIGNATURE_HEADER = "X-Hubscout-Signature"
TIMESTAMP_HEADER = "X-Hubscout-Timestamp"
EVENT_HEADER = "X-Hubscout-Event"
DELIVERY_HEADER = "X-Hubscout-Delivery"
RESULT_PATHS = {"ranking": "/v1/rankings/", "distillation": "/v1/students/"}

EnqueueWebhook = Callable[[str], object]  # job id -> (ignored)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over ``<timestamp>.<body>``, so neither can be replayed with the other."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str, *, tolerance_s: float | None = 300) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, refuse old timestamps."""
    if tolerance_s is not None:
        try:
            if abs(time.time() - float(timestamp)) > tolerance_s:
                return False
        except ValueError:
            return False
    return hmac.compare_digest(signature(secret, timestamp, body), header or "")


def event_for(row: JobRow) -> JobEvent:
    succeeded = row.status == JobStatus.SUCCEEDED and row.result_id
    return JobEvent(event=f"job.{row.status}", job=JobEventJob(
        id=row.id, kind=row.kind, status=row.status, dataset_id=row.dataset_id,
        result_id=row.result_id if succeeded else None,
        result=RESULT_PATHS[row.kind] + row.result_id if succeeded else None,
        error=row.error, created_at=row.created_at, finished_at=row.finished_at))


# ------------------------------------------------------------------------------------------------- dispatch

def dispatch(db: Database, enqueue: EnqueueWebhook, job_ids: list[str] | None = None, limit: int = 100) -> int:
    """Hand every ended job whose callback is still waiting to the queue, once. Returns how many were sent."""
    with db.session() as s:
        q = select(JobRow.id).where(JobRow.callback_state == CallbackState.WAITING,
                                    JobRow.status.in_(JobStatus.FINAL))
        if job_ids is not None:
            q = q.where(JobRow.id.in_(job_ids))
        candidates = list(s.scalars(q.limit(limit)))
    sent = 0
    for job_id in candidates:
        with db.session() as s:
            won = s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.callback_state == CallbackState.WAITING
            ).values(callback_state=CallbackState.PENDING)).rowcount
            s.commit()
        if not won:
            continue  # another process dispatched it
        try:
            enqueue(job_id)
            sent += 1
        except Exception:
            log.exception("could not enqueue the webhook of job %s; a later sweep retries", job_id)
            with db.session() as s:
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.callback_state == CallbackState.PENDING,
                                               JobRow.callback_attempts == 0)
                          .values(callback_state=CallbackState.WAITING))
                s.commit()
    return sent


# ------------------------------------------------------------------------------------------------- delivery

@dataclass(frozen=True)
class Outcome:
    state: str  # "delivered", "failed", "retry" or "skipped"
    attempt: int = 0
    retry_in: float = 0.0
    error: str | None = None


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): base, 2×base, 4×base… up to the cap."""
    return min(settings.webhook_backoff_seconds * 2 ** (attempt - 1), settings.webhook_backoff_max_seconds)


def deliver(db: Database, settings: Settings, job_id: str, *, post: Callable | None = None) -> Outcome:
    """One delivery attempt of ``job_id``'s callback. ``post(url, content, headers, timeout)`` returns a status
    code (default: httpx, no redirects followed)."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
    if row is None or row.callback_state != CallbackState.PENDING or not row.callback_url:
        return Outcome("skipped")
    if not settings.webhook_secret:
        error = "the worker has no webhook secret (HUBSCOUT_WEBHOOK_SECRET): the callback cannot be signed"
        _finish(db, job_id, CallbackState.FAILED, error)
        log.error("webhook of job %s not sent: %s", job_id, error)
        return Outcome("failed", row.callback_attempts, error=error)
    attempt = row.callback_attempts + 1
    with db.session() as s:
        # Claim this attempt number: a duplicate of the task message finds it taken and stops.
        claimed = s.execute(update(JobRow).where(
            JobRow.id == job_id, JobRow.callback_state == CallbackState.PENDING,
            JobRow.callback_attempts == row.callback_attempts).values(callback_attempts=attempt)).rowcount
        s.commit()
    if not claimed:
        return Outcome("skipped")

    event = event_for(row)
    body = event.model_dump_json().encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "hubscout-webhook",
        EVENT_HEADER: event.event,
        DELIVERY_HEADER: job_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(settings.webhook_secret, timestamp, body),
    }
    try:
        status = (post or _post)(row.callback_url, body, headers, settings.webhook_timeout_seconds)
        error = None if 200 <= status < 300 else f"HTTP {status}"
    except Exception as e:  # any transport failure is a failed attempt, not a crashed task
        error = f"{type(e).__name__}: {e}"[:500]
    if error is None:
        _finish(db, job_id, CallbackState.DELIVERED, None)
        log.info("webhook of job %s delivered (attempt %d)", job_id, attempt)
        return Outcome("delivered", attempt)
    if attempt >= settings.webhook_max_attempts:
        _finish(db, job_id, CallbackState.FAILED, f"gave up after {attempt} attempts; last: {error}"[:500])
        log.warning("webhook of job %s failed for good after %d attempts: %s", job_id, attempt, error)
        return Outcome("failed", attempt, error=error)
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(callback_error=error))
        s.commit()
    wait = backoff(settings, attempt)
    log.info("webhook of job %s attempt %d failed (%s); retrying in %.1f s", job_id, attempt, error, wait)
    return Outcome("retry", attempt, wait, error)


def _finish(db: Database, job_id: str, state: str, error: str | None) -> None:
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.callback_state == CallbackState.PENDING)
                  .values(callback_state=state, callback_error=error, callback_done_at=utcnow()))
        s.commit()


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    import httpx

    # No redirects: a signed event goes where the job's owner said, nowhere else.
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        return client.post(url, content=body, headers=headers).status_code
