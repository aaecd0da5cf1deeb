"""Database tables. JSON columns are JSON on SQLite and JSONB on PostgreSQL; timestamps are aware UTC."""
from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.db import PortableJSON, UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: PortableJSON, list[Any]: PortableJSON, dt.datetime: UTCDateTime}


# Who owns the rows when API keys are off (the embedded default); otherwise an owner is a key's hash (app.auth).
LOCAL_OWNER = "local"


def new_id(prefix: str = "") -> str:
    """A random id; the prefix (``ds_``, ``job_``) tells a reader what it names."""
    return prefix + uuid.uuid4().hex


def result_id_for(job_id: str) -> str:
    """A ranking or student has its job's id: one id to follow, and a re-run of the job overwrites its result
    instead of adding a second."""
    return job_id


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSONB and strict JSON clients refuse them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class CallbackState:
    """Where a job's webhook stands; NULL when the job has no callback_url."""

    WAITING = "waiting"  # the job has not ended yet
    PENDING = "pending"  # handed to a worker for delivery (first attempt or a retry)
    DELIVERED = "delivered"  # a 2xx answer was recorded: never sent again
    FAILED = "failed"  # every attempt failed
    ALL = (WAITING, PENDING, DELIVERED, FAILED)


class JobKind:
    RANKING = "ranking"
    DISTILLATION = "distillation"
    ALL = (RANKING, DISTILLATION)


class DatasetRow(Base):
    __tablename__ = "datasets"
    # One row per owner, content hash and name: the same content under another name is another row sharing the
    # stored file (the name is the request's). Deduplicating across owners would tell one key that another
    # uploaded the same data.
    __table_args__ = (UniqueConstraint("owner", "sha256", "name", name="uq_datasets_owner_sha256_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), server_default=LOCAL_OWNER)
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255), default="")
    n_samples: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]]
    class_counts: Mapped[dict[str, Any]]
    image_shape: Mapped[list[Any]]
    storage_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    upload_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SpecStatus:
    PENDING = "pending"  # a worker is to compute it
    READY = "ready"
    FAILED = "failed"  # the teacher is still ranked, always exactly
    ALL = (PENDING, READY, FAILED)


class TeacherRow(Base):
    """Mirror of the repository folder's metadata, for listing and pagination without touching the disk, and the
    teacher's search specification (``hubscout.spec``), which shortlisting reads without touching the disk."""

    __tablename__ = "teachers"
    __table_args__ = (
        Index("ix_teachers_spec_status_id", "spec_status", "id"),
        Index("ix_teachers_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The key hash of whoever uploaded it; NULL: the shared catalogue (the demo repository, admin uploads),
    # which every key sees and only an admin key changes.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    arch: Mapped[str] = mapped_column(String(128))
    labels: Mapped[list[Any]]
    input_config: Mapped[dict[str, Any]]
    arch_kwargs: Mapped[dict[str, Any]]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", PortableJSON)
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    num_params: Mapped[int] = mapped_column(BigInteger, default=0)
    num_classes: Mapped[int] = mapped_column(Integer)
    # ``Specification.to_bytes()``: an npz of float16 prototypes, float32 masses, float16 self-agreement and a
    # JSON header with the label names (never pickled); spec_sha256 lets a worker keep decoded ones in memory.
    spec: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    spec_status: Mapped[str] = mapped_column(String(16), default=SpecStatus.PENDING, server_default=SpecStatus.PENDING)
    spec_source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    spec_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spec_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    spec_requested_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    spec_updated_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @classmethod
    def visible_to(cls, owner: str, admin: bool = False):
        """The rows a key sees: the shared catalogue and its own teachers (an admin key: all)."""
        from sqlalchemy import or_, true

        return true() if admin else or_(cls.owner.is_(None), cls.owner == owner)


class IdempotencyRow(Base):
    """The first answer to a POST sent with an ``Idempotency-Key``, replayed to the same key and body. A row
    without a status is a request still running; the unique constraint makes two racing requests one."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, nullable=True)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_jobs_callback_state", "callback_state"),
        Index("ix_jobs_owner_status", "owner", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The API key hash (app.auth) of whoever created it; its ranking or student follows it.
    owner: Mapped[str] = mapped_column(String(64), server_default=LOCAL_OWNER)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    params: Mapped[dict[str, Any]]
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    result_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # A distillation's per-epoch training curves so far, written with its progress, so a client can draw them live.
    curves: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    callback_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    callback_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    callback_done_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Last time its task was handed to the broker: a job queued long after that is sent again (service.jobs.sweep).
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)


class TeacherOutputRow(Base):
    """A cached forward pass: its arrays live in storage, this row says they exist and how often they served."""

    __tablename__ = "teacher_outputs"
    __table_args__ = (UniqueConstraint("teacher_sha256", "dataset_sha256", name="uq_teacher_outputs_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    teacher_sha256: Mapped[str] = mapped_column(String(64))
    dataset_sha256: Mapped[str] = mapped_column(String(64), index=True)
    storage_key: Mapped[str] = mapped_column(String(255))
    n_samples: Mapped[int] = mapped_column(Integer)
    feature_dim: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ScoreRow(Base):
    """Every metric value computed for a (teacher weights, dataset content) pair."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("teacher_sha256", "dataset_sha256", "metric", "cost", name="uq_scores_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    teacher_sha256: Mapped[str] = mapped_column(String(64))
    dataset_sha256: Mapped[str] = mapped_column(String(64), index=True)
    metric: Mapped[str] = mapped_column(String(32))
    cost: Mapped[str] = mapped_column(String(32), default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    direction: Mapped[str] = mapped_column(String(8))
    extra: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RankingRow(Base):
    __tablename__ = "rankings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    result: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StudentRow(Base):
    __tablename__ = "students"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    teacher_ids: Mapped[list[Any]]
    student_arch: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    archive_key: Mapped[str] = mapped_column(String(255))
    archive_bytes: Mapped[int] = mapped_column(BigInteger)
    archive_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
