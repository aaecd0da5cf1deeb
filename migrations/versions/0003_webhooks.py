"""webhooks: a job's callback URL and the state of its delivery

Revision ID: 0003_webhooks
Revises: 0002_owners
Create Date: 2026-11-25
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_webhooks"
down_revision: str | None = "0002_owners"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot drop columns in place (downgrade); on PostgreSQL it is plain ALTER TABLE.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("callback_url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("callback_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("callback_error", sa.String(500), nullable=True))
        batch.add_column(sa.Column("callback_done_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_callback_state", ["callback_state"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_callback_state")
        for name in ("callback_done_at", "callback_error", "callback_attempts", "callback_state", "callback_url"):
            batch.drop_column(name)
