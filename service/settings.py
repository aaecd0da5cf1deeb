"""Every knob of the service, in one place.

With no configuration at all the service is self-contained ("embedded"): a SQLite file, local file storage and a
Celery worker on a filesystem broker, all under the data dir. Setting ``DATABASE_URL`` and ``CELERY_BROKER_URL``
switches to PostgreSQL and Redis; any number of ``celery -A worker.celery_app worker`` processes can then run on
other machines, provided they see the same storage and repository folders (a shared volume).
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUBSCOUT_", extra="ignore", populate_by_name=True)

    # --- infrastructure (standard names, no prefix)
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL"),
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db. Default: SQLite under data_dir.")
    celery_broker_url: str | None = Field(
        None, validation_alias=AliasChoices("CELERY_BROKER_URL"),
        description="Celery broker, e.g. redis://host:6379/0. Default: a filesystem broker under data_dir.")

    # --- folders
    data_dir: Path = Field(Path("var"), description="Root of everything the service writes by default.")
    storage_dir: Path | None = Field(None, description="Blob storage (datasets, cached outputs, students); "
                                                       "shared by API and workers. Default: <data_dir>/storage.")
    # The CLI reads HUBSCOUT_REPO for the same folder, so both names are accepted.
    repository_dir: Path = Field(Path("demo-zoo"), validation_alias=AliasChoices(
        "HUBSCOUT_REPOSITORY_DIR", "HUBSCOUT_REPO"),
        description="Teacher repository folder; shared by API and workers.")
    build_demo_zoo: bool = Field(True, description="Build the demo zoo on first start when the repository "
                                                   "folder is missing.")
    demo_zoo_quick: bool = Field(False, description="Build the small (test) demo zoo instead of the full one.")
    demo_zoo_train: bool = Field(False, description="Train the full demo zoo's small teachers from scratch "
                                                    "(minutes) instead of restoring their committed, "
                                                    "sha256-checked weights (seconds).")
    zoo_build_workers: int | None = Field(None, ge=1, description="Processes that train the demo teachers on "
                                                                  "first start (one torch thread each); default: "
                                                                  "up to 2, one per core.")

    # --- access
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (env: comma-separated). Every route but /healthz, the docs and the web page "
                    "then needs one (Authorization: Bearer KEY, or X-API-Key: KEY), and a key sees only its own "
                    "datasets, jobs and results. None: allowed only for the embedded default bound to loopback.")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys that may also change or delete any teacher, the shared catalogue (the demo "
                    "repository) included (env: comma-separated). They are accepted as API keys too.")
    idempotency_ttl_seconds: float = Field(24 * 3600, gt=0, description="How long an Idempotency-Key's first "
                                                                         "answer is replayed.")
    max_active_jobs_per_key: int = Field(20, ge=1, description="Queued plus running jobs one key may have; past "
                                                                "it job creation answers 429.")

    # --- uploads and limits
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest dataset upload.")
    max_teacher_upload_bytes: int = Field(1024 * 1024 * 1024, ge=1, description="Largest teacher weights upload.")
    upload_chunk_bytes: int = Field(1024 * 1024, ge=4096, description="Bytes written to storage per chunk.")
    max_form_field_bytes: int = Field(1024 * 1024, ge=1024, description="Largest non-file multipart field.")
    max_json_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest body of any request that is not "
                                                                        "a multipart upload; refused (413) while "
                                                                        "it is read.")
    max_json_depth: int = Field(32, ge=2, description="Deepest nesting of arrays and objects in a JSON body or "
                                                      "JSON form field.")
    max_teacher_params: int = Field(250_000_000, ge=1, description="Largest teacher (parameters of its "
                                                                   "architecture with its options), checked "
                                                                   "before the model is built.")
    max_samples: int = Field(200_000, ge=1)
    max_classes: int = Field(1_000, ge=2)
    max_image_side: int = Field(1024, ge=8)
    max_decoded_bytes: int = Field(2_000_000_000, ge=1, description="Largest dataset once decoded (uint8 values); "
                                                                     "guards against archive bombs.")
    max_page_size: int = Field(500, ge=1)
    max_epochs: int = Field(200, ge=1, description="Upper bound on a distillation's epochs.")

    # --- jobs and workers
    job_max_attempts: int = Field(3, ge=1, description="Deliveries of a job (worker lost) before it is failed.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a running job proves its worker alive.")
    stale_after_seconds: float = Field(60.0, gt=0, description="A running job silent this long has lost its "
                                                                "worker and is re-queued or failed.")
    visibility_timeout: int = Field(3600, ge=1, description="Redis: seconds before an unacknowledged task is "
                                                            "redelivered to another worker.")
    resend_queued_after_seconds: float = Field(
        600.0, gt=0, description="A job queued this long since it was last sent is sent again (a broker restarted "
                                 "without persistence forgets its messages); duplicates are harmless.")
    db_retry_seconds: float = Field(60.0, ge=0, description="How long a worker keeps retrying to write a finished "
                                                            "job's result while the database is unreachable.")
    local_worker: bool | None = Field(None, description="Start a Celery worker next to the API in `serve`. "
                                                        "Default: only with the embedded filesystem broker.")
    worker_concurrency: int = Field(1, ge=1)
    device: str | None = Field(None, description="torch device for workers; default cuda when available.")
    batch_size: int = Field(64, ge=1)
    shortlist_k: int = Field(10, ge=0, description="Rankings that do not say: score every teacher from its "
                                                   "specification and rank exactly only the best this many "
                                                   "(when there are more teachers); 0 = always exhaustive.")
    # = hubscout.spec.EXHAUSTIVE_MAX_TEACHERS (not imported: settings load without torch); a test keeps them equal.
    exhaustive_max_teachers: int = Field(32, ge=0, description="Rankings of at most this many teachers run every "
                                                               "teacher exactly, shortlist or not: the shortlist "
                                                               "would save less than it costs (docs/method.md §6).")
    auto_migrate: bool = Field(True, description="Run Alembic migrations when the API starts.")

    # --- webhooks (a job's callback_url, called once when it ends)
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key that signs every callback. Without it "
                                                          "the API refuses jobs with a callback_url.")
    webhook_max_attempts: int = Field(6, ge=1, description="Deliveries tried before a callback is given up.")
    webhook_backoff_seconds: float = Field(5.0, gt=0, description="Wait before the first retry; doubled each "
                                                                   "time after.")
    webhook_backoff_max_seconds: float = Field(600.0, gt=0, description="Longest wait between two attempts.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Per attempt: connect and answer within this.")
    log_level: str = "INFO"

    @field_validator("database_url", "celery_broker_url", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return v or None

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if v is None:
            return []
        if isinstance(v, str):
            v = v.split(",")
        return [k.strip() for k in v if isinstance(k, str) and k.strip()] if isinstance(v, (list, tuple)) else v

    # ------------------------------------------------------------------------------------------ derived values

    @property
    def storage_root(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// would pick psycopg2, which is not installed; psycopg 3 is.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'hubscout.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def broker_url(self) -> str:
        # The filesystem transport ignores the host; naming one spares kombu's "no hostname" warning.
        return self.celery_broker_url or "filesystem://localhost/"

    @property
    def broker_is_filesystem(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def embedded(self) -> bool:
        """No external broker: the API process must bring its own worker."""
        return self.broker_is_filesystem

    @property
    def start_local_worker(self) -> bool:
        return self.embedded if self.local_worker is None else self.local_worker

    @property
    def auth_enabled(self) -> bool:
        """Keys are checked unless none is configured on the embedded default (which must then bind to loopback;
        see ``check_exposure``)."""
        return bool(self.api_keys or self.admin_keys) or not self.embedded

    @property
    def all_keys(self) -> list[str]:
        """Every key a request may send: the API keys and the admin keys."""
        return list(dict.fromkeys([*self.api_keys, *self.admin_keys]))

    def check_exposure(self, host: str | None = None) -> None:
        """Refuse a configuration that would serve without keys beyond this machine. ``host``: the bind address,
        when known (``hubscout serve`` knows it; a bare ``uvicorn app.main:app`` does not)."""
        if self.all_keys:
            return
        if not self.embedded:
            raise ConfigError("no API keys configured: set HUBSCOUT_API_KEYS (comma-separated) — a deployment "
                              "with an external broker serves other machines and must check keys")
        if host is not None and not is_loopback(host):
            raise ConfigError(f"refusing to serve without API keys on {host}: set HUBSCOUT_API_KEYS "
                              f"(comma-separated) or bind to 127.0.0.1")


class ConfigError(RuntimeError):
    """A configuration the service refuses to start with; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
