"""The worker's Celery application: ``celery -A worker.celery_app worker``. Configuration: worker.config."""
from __future__ import annotations

from app.settings import get_settings
from worker.config import make_celery

celery_app = make_celery(get_settings())
app = celery_app
