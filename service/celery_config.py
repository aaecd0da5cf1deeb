"""Celery configuration, built from service.settings for the API (which only sends) and the workers (which run).

Tasks are acknowledged only after they finish (acks_late) and handed back if the worker process dies
(reject_on_worker_lost); with Redis, the task of a worker killed outright is redelivered once the visibility
timeout passes. The job table's heartbeat sweep (service.jobs) covers every other loss, including the embedded
filesystem broker, which forgets a message once a worker has taken it.
"""
from __future__ import annotations

from celery import Celery

from service.settings import Settings

TASK_RUN_JOB = "hubscout.run_job"
TASK_DELIVER_WEBHOOK = "hubscout.deliver_webhook"
TASK_COMPUTE_SPEC = "hubscout.compute_spec"
QUEUE = "hubscout"


def make_celery(settings: Settings) -> Celery:
    app = Celery("hubscout", broker=settings.broker_url, include=["worker.tasks"])
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout}
    conf: dict = dict(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time: a prefetched task would be stuck behind a long distillation.
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the database, not in a Celery backend
        result_backend=None,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
    )
    if settings.broker_is_filesystem:
        root = settings.broker_dir
        transport_options.update(
            data_folder_in=str(root / "queue"), data_folder_out=str(root / "queue"),
            control_folder=str(root / "control"), processed_folder=str(root / "processed"),
            store_processed=False,
            # The filesystem transport polls; 0.1 s keeps a cached ranking's round trip well under a second.
            polling_interval=0.1,
        )
        # Broadcast (remote control, revoke) over files would leave per-worker mailboxes behind; cancellation
        # goes through the job row instead, which every running task checks.
        conf["worker_enable_remote_control"] = False
    conf["broker_transport_options"] = transport_options
    app.conf.update(conf)
    return app


def ensure_broker_dirs(settings: Settings) -> None:
    """The filesystem broker's folders; made when a process starts using them, never as an import side effect."""
    if settings.broker_is_filesystem:
        for sub in ("queue", "control", "processed"):
            (settings.broker_dir / sub).mkdir(parents=True, exist_ok=True)
