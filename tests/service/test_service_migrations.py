"""`alembic upgrade head` builds the schema the models describe, on SQLite and on PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from svc_helpers import base_env, create_database, drop_database

from service.tables import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"datasets", "teachers", "jobs", "teacher_outputs", "scores", "rankings", "students", "idempotency_keys"}


def alembic(*args: str, **env: str) -> None:
    done = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=base_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def check_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == [], diff
            indexes = {i["name"] for i in inspect(conn).get_indexes("teachers")}
            assert "ix_teachers_name" in indexes
    finally:
        engine.dispose()


def test_sqlite(tmp_path):
    alembic("upgrade", "head", HUBSCOUT_DATA_DIR=str(tmp_path))
    check_schema(f"sqlite:///{tmp_path / 'hubscout.db'}")
    alembic("downgrade", "base", HUBSCOUT_DATA_DIR=str(tmp_path))


@pytest.fixture()
def scratch_pg(postgres_admin):
    """A fresh database of its own, so downgrade can be tried without disturbing the session's."""
    name = f"hubscout_test_mig_{uuid.uuid4().hex[:12]}"
    yield create_database(postgres_admin, name)
    drop_database(postgres_admin, name)


def test_postgresql(scratch_pg):
    alembic("upgrade", "head", DATABASE_URL=scratch_pg)
    check_schema(scratch_pg)
    alembic("downgrade", "base", DATABASE_URL=scratch_pg)
    alembic("upgrade", "head", DATABASE_URL=scratch_pg)
