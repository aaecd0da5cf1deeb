"""The worker's Celery application: ``celery -A worker.celery_app worker``. Configuration: service.celery_config."""
from __future__ import annotations

from celery import signals

from service.celery_config import ensure_broker_dirs, make_celery
from service.settings import get_settings

celery_app = make_celery(get_settings())
app = celery_app


@signals.celeryd_init.connect
def _before_consuming(**_) -> None:
    ensure_broker_dirs(get_settings())
