"""owners: datasets and jobs belong to an API key; datasets deduplicated per owner; jobs remember when they were
last sent to the broker

Rows that existed before belong to the fixed owner ``local`` (the embedded default without keys).

Revision ID: 0002_owners
Revises: 0001
Create Date: 2026-11-27
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_owners"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default="local"))
        batch.drop_constraint("datasets_sha256_key", type_="unique")
        batch.create_unique_constraint("uq_datasets_owner_sha256", ["owner", "sha256"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default="local"))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_owner_status", ["owner", "status"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_status")
        batch.drop_column("enqueued_at")
        batch.drop_column("owner")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_datasets_owner_sha256", type_="unique")
        # Fails if two owners uploaded the same content: only one copy could stay, and which is not ours to pick.
        batch.create_unique_constraint("datasets_sha256_key", ["sha256"])
        batch.drop_column("owner")
