"""The worker's Celery application: ``celery -A worker.celery_app worker``. Configuration: worker.config."""
from __future__ import annotations

from celery import signals

from app.settings import get_settings
from worker.config import ensure_broker_dirs, make_celery

celery_app = make_celery(get_settings())
app = celery_app


@signals.celeryd_init.connect
def _before_consuming(**_) -> None:
    ensure_broker_dirs(get_settings())
