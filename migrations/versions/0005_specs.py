"""teacher specifications in the database: status, source and hash beside the spec bytes; listing indexes

Revision ID: 0005_specs
Revises: 0004_web
Create Date: 2026-11-25
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_specs"
down_revision: str | None = "0004_web"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def TS() -> sa.DateTime:  # noqa: N802
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("teachers") as batch:
        # Existing rows have no specification yet: the workers compute one for every pending teacher.
        batch.add_column(sa.Column("spec_status", sa.String(16), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("spec_source", sa.String(32), nullable=True))
        batch.add_column(sa.Column("spec_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("spec_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("spec_requested_at", TS(), nullable=True))
        batch.add_column(sa.Column("spec_updated_at", TS(), nullable=True))
    op.create_index("ix_teachers_spec_status_id", "teachers", ["spec_status", "id"])
    op.create_index("ix_teachers_created_at_id", "teachers", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_teachers_created_at_id", table_name="teachers")
    op.drop_index("ix_teachers_spec_status_id", table_name="teachers")
    with op.batch_alter_table("teachers") as batch:
        for col in ("spec_updated_at", "spec_requested_at", "spec_error", "spec_sha256", "spec_source",
                    "spec_status"):
            batch.drop_column(col)
