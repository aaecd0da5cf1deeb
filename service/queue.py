"""Sending jobs to the workers. It names the task (service.celery_config) instead of importing it, so it never loads
worker code."""
from __future__ import annotations

import logging
import uuid

from service.celery_config import TASK_COMPUTE_SPEC, TASK_DELIVER_WEBHOOK, TASK_RUN_JOB, ensure_broker_dirs, make_celery
from service.settings import Settings

log = logging.getLogger("hubscout.queue")


class JobQueue:
    def __init__(self, settings: Settings):
        self.settings = settings
        ensure_broker_dirs(settings)
        self.celery = make_celery(settings)
        self._task = TASK_RUN_JOB
        self._webhook_task = TASK_DELIVER_WEBHOOK
        self._spec_task = TASK_COMPUTE_SPEC

    def enqueue(self, job_id: str) -> str:
        return self._send(self._task, job_id)

    def enqueue_webhook(self, job_id: str) -> str:
        """Deliver the callback of an ended job (service.webhooks); the task retries itself with backoff."""
        return self._send(self._webhook_task, job_id)

    def _send(self, task: str, job_id: str) -> str:
        task_id = uuid.uuid4().hex
        self.celery.send_task(task, args=[job_id], task_id=task_id, retry=True,
                              retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
        return task_id

    def enqueue_spec(self, teacher_id: str) -> str:
        """Ask a worker for a teacher's specification (service.specs says when to ask again)."""
        task_id = uuid.uuid4().hex
        self.celery.send_task(self._spec_task, args=[teacher_id], task_id=task_id, retry=True,
                              retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
        return task_id

    def revoke(self, task_id: str | None) -> None:
        """Best effort: drop a still-queued message. The job row's status is what actually stops a task."""
        if not task_id or self.settings.broker_is_filesystem:
            return
        try:
            self.celery.control.revoke(task_id)
        except Exception:
            log.warning("could not revoke task %s", task_id, exc_info=True)

    def check(self) -> None:
        if self.settings.broker_is_filesystem:
            d = self.settings.broker_dir / "queue"
            probe = d / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            return
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            # A pooled connection can look alive after the broker went away; a round trip proves it answers.
            client = getattr(conn.default_channel, "client", None)
            if client is not None and hasattr(client, "ping"):
                client.ping()

    def close(self) -> None:
        try:
            self.celery.close()
        except Exception:
            pass
