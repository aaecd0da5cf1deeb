"""The teacher repository folder and its mirror in the ``teachers`` table.

The folder (hubscout.teachers.Repository) is the source of truth, shared by API and workers; the table is a
mirror that lists and paginates without reading a thousand teacher.json files per request.
"""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import delete, func, select

from service import specs
from service.db import Database, utcnow
from service.settings import Settings
from service.tables import SpecStatus, TeacherRow

log = logging.getLogger("hubscout.repository")
# Beside teacher.json: the key hash of who uploaded the teacher (none: the shared catalogue), so a table rebuilt
# from the folder keeps the owners.
OWNER_FILE = "owner"


def folder_owner(repo, teacher_id: str) -> str | None:
    path = repo.root / teacher_id / OWNER_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def row_from_teacher(teacher, row: TeacherRow | None = None) -> TeacherRow:
    row = row or TeacherRow(id=teacher.id)
    row.name = teacher.name
    row.arch = teacher.arch
    row.labels = list(teacher.labels)
    row.num_classes = len(teacher.labels)
    row.input_config = teacher.input.to_dict()
    row.arch_kwargs = dict(teacher.arch_kwargs)
    row.meta = dict(teacher.metadata)
    row.weights_sha256 = teacher.weights_sha256
    row.num_params = int(teacher.num_params)
    return row


def sync(db: Database, repo) -> dict[str, int]:
    """Make the table mirror the folder: add new teachers, refresh changed ones, drop vanished ones; bring each
    row's specification in step (``service.specs.sync_row``)."""
    teachers = {}
    for tid in repo.ids():
        try:
            teachers[tid] = repo.get(tid)
        except Exception as e:  # one broken folder must not hide the others
            log.warning("skipping teacher %s: %s", tid, e)
    added = updated = 0
    with db.session() as s:
        rows = {r.id: r for r in s.scalars(select(TeacherRow))}
        for tid, t in teachers.items():
            row = rows.get(tid)
            if row is None:
                row = row_from_teacher(t)
                row.owner = folder_owner(repo, tid)
                specs.set_pending(row)
                s.add(row)
                specs.sync_row(row, repo, t, weights_changed=True)
                added += 1
                continue
            weights_changed = row.weights_sha256 != t.weights_sha256
            if weights_changed or (row.name, row.labels, row.input_config, row.meta) != (
                    t.name, list(t.labels), t.input.to_dict(), dict(t.metadata)):
                row_from_teacher(t, row).updated_at = utcnow()
                updated += 1
            specs.sync_row(row, repo, t, weights_changed)
        gone = [tid for tid in rows if tid not in teachers]
        if gone:
            s.execute(delete(TeacherRow).where(TeacherRow.id.in_(gone)))
        s.commit()
        pending = s.scalar(select(func.count()).select_from(TeacherRow)
                           .where(TeacherRow.spec_status == SpecStatus.PENDING))
    stats = {"teachers": len(teachers), "added": added, "updated": updated, "removed": len(gone),
             "specs_pending": pending}
    log.info("teacher table synced with %s: %s", repo.root, stats)
    return stats


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_repository(settings: Settings, background: bool = False, after=None, wait_for=None,
                      then=None) -> Path:
    """Build the demo zoo when the repository folder is missing (and the setting allows it): in a background
    thread with ``background`` (``service.zoo_build``; ``after(root)`` runs when it is in place, ``then(root)``
    once it is ready: the specifications), else before returning.

    Built beside the target and renamed into place, under a lock: an interrupted build leaves no half zoo that a
    later start would mistake for a complete one, and two processes starting together build it once."""
    from service import zoo_build

    root = settings.repository_dir.resolve()
    if root.exists():
        return root
    if not settings.build_demo_zoo:
        log.warning("teacher repository %s does not exist; starting with no teachers "
                    "(HUBSCOUT_BUILD_DEMO_ZOO is off)", root)
        return root
    zoo_build.start(settings, join=not background, after=after, wait_for=wait_for, then=then)
    return root
