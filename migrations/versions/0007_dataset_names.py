"""datasets: one row per (owner, content, name): a re-upload under another name keeps the content, not the name

Revision ID: 0007_dataset_names
Revises: 0006_teacher_owners_idempotency
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Sequence

from alembic import op

revision: str = "0007_dataset_names"
down_revision: str | None = "0006_teacher_owners_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_datasets_owner_sha256", type_="unique")
        batch.create_unique_constraint("uq_datasets_owner_sha256_name", ["owner", "sha256", "name"])


def downgrade() -> None:
    # Fails while two names share one content: those rows carry jobs, and which to drop is not ours to guess.
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_datasets_owner_sha256_name", type_="unique")
        batch.create_unique_constraint("uq_datasets_owner_sha256", ["owner", "sha256"])
