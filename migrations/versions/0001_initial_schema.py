"""initial schema: datasets, teachers, jobs, teacher_outputs, scores, rankings, students

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from service.tables, so this revision stays what it was when the models move on.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def TS() -> sa.DateTime:  # noqa: N802
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("classes", JSON, nullable=False),
        sa.Column("class_counts", JSON, nullable=False),
        sa.Column("image_shape", JSON, nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS(), nullable=False),
        sa.UniqueConstraint("sha256", name="datasets_sha256_key"),
    )
    op.create_table(
        "teachers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("arch", sa.String(128), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("input_config", JSON, nullable=False),
        sa.Column("arch_kwargs", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("num_params", sa.BigInteger(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", TS(), nullable=False),
        sa.Column("updated_at", TS(), nullable=False),
    )
    op.create_index("ix_teachers_name", "teachers", ["name"])
    op.create_index("ix_teachers_weights_sha256", "teachers", ["weights_sha256"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("result_id", sa.String(40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("created_at", TS(), nullable=False),
        sa.Column("started_at", TS(), nullable=True),
        sa.Column("finished_at", TS(), nullable=True),
        sa.Column("heartbeat_at", TS(), nullable=True),
    )
    op.create_index("ix_jobs_created_at_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_dataset_id", "jobs", ["dataset_id"])
    op.create_index("ix_jobs_status_heartbeat", "jobs", ["status", "heartbeat_at"])
    op.create_table(
        "teacher_outputs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("teacher_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("feature_dim", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("created_at", TS(), nullable=False),
        sa.Column("last_used_at", TS(), nullable=False),
        sa.UniqueConstraint("teacher_sha256", "dataset_sha256", name="uq_teacher_outputs_key"),
    )
    op.create_index("ix_teacher_outputs_dataset_sha256", "teacher_outputs", ["dataset_sha256"])
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("teacher_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("cost", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("extra", JSON, nullable=True),
        sa.Column("created_at", TS(), nullable=False),
        sa.UniqueConstraint("teacher_sha256", "dataset_sha256", "metric", "cost", name="uq_scores_key"),
    )
    op.create_index("ix_scores_dataset_sha256", "scores", ["dataset_sha256"])
    op.create_table(
        "rankings",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("created_at", TS(), nullable=False),
        sa.UniqueConstraint("job_id", name="rankings_job_id_key"),
    )
    op.create_index("ix_rankings_dataset_id", "rankings", ["dataset_id"])
    op.create_table(
        "students",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("teacher_ids", JSON, nullable=False),
        sa.Column("student_arch", sa.String(128), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("archive_key", sa.String(255), nullable=False),
        sa.Column("archive_bytes", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS(), nullable=False),
        sa.UniqueConstraint("job_id", name="students_job_id_key"),
    )
    op.create_index("ix_students_dataset_id", "students", ["dataset_id"])


def downgrade() -> None:
    for table in ("students", "rankings", "scores", "teacher_outputs", "jobs", "teachers", "datasets"):
        op.drop_table(table)
