"""Recovery: the sweeps that send again what a lost worker or broker dropped, and callbacks of ended jobs."""
from __future__ import annotations

import logging
import threading
import time

from service import jobs, specs, webhooks
from worker.runtime import Context, context

log = logging.getLogger("hubscout.worker")


def dispatch_webhooks(ctx: Context, job_ids: list[str] | None = None) -> None:
    try:
        webhooks.dispatch(ctx.db, ctx.queue.enqueue_webhook, job_ids)
    except Exception:  # the periodic sweep tries again; a job's own outcome must not depend on this
        log.warning("could not dispatch webhooks", exc_info=True)


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


class Sweeper(threading.Thread):
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
            dispatch_webhooks(ctx)
