"""Teacher specifications in the ``teachers`` table, shared by the API (sync, upload), and the workers (compute,
shortlist).

Lifecycle of a row's specification: ``pending`` (a worker is to compute it; ``spec_requested_at`` says when one was
last asked) → ``ready`` (``spec`` holds ``Specification.to_bytes()``) or ``failed`` (``spec_error`` says why). A
teacher whose specification is not ready is still ranked: always exactly, never shortlisted away. A lost request
(a worker killed mid-way, a broker that forgot it) is sent again by the workers' sweep once
``stale_after_seconds`` have passed. The demo repository's first build is the exception: the API's build thread
computes its teachers' specifications itself, after the repository is ready (:func:`compute_local`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Callable

from sqlalchemy import or_, select, update

from service.db import Database, utcnow
from service.settings import Settings
from service.tables import SpecStatus, TeacherRow

log = logging.getLogger("hubscout.specs")


def folder_spec(repo, teacher) -> bytes | None:
    """The bytes of the teacher's ``spec.npz`` when it is current for its weights, else None."""
    from hubscout.spec import SPEC_FILE, Specification

    path = repo.root / teacher.id / SPEC_FILE
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        spec = Specification.from_bytes(data)
    except (OSError, ValueError):
        return None
    return data if spec.is_current(teacher.weights_sha256) else None


def set_ready(row: TeacherRow, data: bytes) -> None:
    from hubscout.spec import Specification

    spec = Specification.from_bytes(data)
    row.spec = data
    row.spec_sha256 = hashlib.sha256(data).hexdigest()
    row.spec_status = SpecStatus.READY
    row.spec_source = spec.source
    row.spec_error = None
    row.spec_updated_at = utcnow()


def set_pending(row: TeacherRow, requested: bool = False) -> None:
    row.spec = None
    row.spec_sha256 = None
    row.spec_status = SpecStatus.PENDING
    row.spec_source = None
    row.spec_error = None
    row.spec_requested_at = utcnow() if requested else None
    row.spec_updated_at = utcnow()


def db_spec_is_current(row: TeacherRow) -> bool:
    from hubscout.spec import Specification

    if row.spec_status != SpecStatus.READY or row.spec is None:
        return False
    try:
        return Specification.from_bytes(row.spec).is_current(row.weights_sha256)
    except ValueError:
        return False


def sync_row(row: TeacherRow, repo, teacher, weights_changed: bool) -> None:
    """Bring a mirrored row's specification in step with the folder: the folder's ``spec.npz`` wins when current;
    else a current one already in the row stays; else the teacher waits for a worker."""
    data = folder_spec(repo, teacher)
    if data is not None:
        if row.spec_sha256 != hashlib.sha256(data).hexdigest() or row.spec_status != SpecStatus.READY:
            set_ready(row, data)
        return
    if weights_changed or not db_spec_is_current(row):
        if row.spec_status != SpecStatus.PENDING or row.spec is not None or weights_changed:
            set_pending(row)


def due(db: Database, settings: Settings, limit: int = 1000) -> list[str]:
    """Pending teachers nobody asked a worker for, or whose request went stale; marked as asked now."""
    cutoff = utcnow() - dt.timedelta(seconds=settings.stale_after_seconds)
    stale = or_(TeacherRow.spec_requested_at.is_(None), TeacherRow.spec_requested_at < cutoff)
    out = []
    with db.session() as s:
        ids = list(s.scalars(select(TeacherRow.id).where(TeacherRow.spec_status == SpecStatus.PENDING, stale)
                             .order_by(TeacherRow.id).limit(limit)))
        for tid in ids:
            # Conditional: of two sweepers, one sends the request.
            res = s.execute(update(TeacherRow).where(TeacherRow.id == tid, TeacherRow.spec_status == SpecStatus.PENDING,
                                                     stale).values(spec_requested_at=utcnow()))
            if res.rowcount == 1:
                out.append(tid)
        s.commit()
    return out


def request_due(db: Database, settings: Settings, send: Callable[[str], object]) -> int:
    """Send a computation request for every due pending teacher; returns how many were sent."""
    n = 0
    for tid in due(db, settings):
        try:
            send(tid)
            n += 1
        except Exception:
            log.warning("could not request the specification of %s; the sweep will retry", tid, exc_info=True)
    return n


def hold(db: Database, teacher_ids: list[str]) -> int:
    """Mark pending teachers as asked for now, so that the sweep leaves them alone for ``stale_after_seconds``:
    the process computing them itself calls this again before that runs out."""
    if not teacher_ids:
        return 0
    with db.session() as s:
        res = s.execute(update(TeacherRow).where(TeacherRow.id.in_(teacher_ids),
                                                 TeacherRow.spec_status == SpecStatus.PENDING)
                        .values(spec_requested_at=utcnow()))
        s.commit()
        return res.rowcount or 0


def store_ready(db: Database, spec) -> bool:
    """Store a computed specification in its teacher's row, if the row still has the weights it describes."""
    with db.session() as s:
        row = s.get(TeacherRow, spec.teacher_id)
        if row is None or row.weights_sha256 != spec.weights_sha256:
            return False
        set_ready(row, spec.to_bytes())
        s.commit()
        return True


def compute_local(settings: Settings, root) -> int:
    """Compute the missing specifications of the repository at ``root`` in this process (the API's first-start
    thread), one teacher at a time, each stored in its folder and its row as soon as it is done; returns how many.

    Meanwhile the teachers still to do are held (:func:`hold`), renewed after each one: otherwise the workers'
    sweep would queue a specification task per teacher ahead of the users' first jobs. If this process dies, the
    holds run out and the sweep asks the workers."""
    from hubscout.spec import ensure_specifications
    from hubscout.teachers import Repository

    db = Database(settings)
    todo: list[str] = []

    def on_missing(ids: list[str]) -> None:
        todo.extend(ids)
        hold(db, todo)

    def on_spec(spec) -> None:
        store_ready(db, spec)
        if spec.teacher_id in todo:
            todo.remove(spec.teacher_id)
        hold(db, todo)

    try:
        return ensure_specifications(Repository(root), device=settings.device, on_missing=on_missing,
                                     on_spec=on_spec)
    finally:
        db.dispose()
