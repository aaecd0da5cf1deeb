"""A specification job: compute a pending teacher's specification and store it in its row (and folder)."""
from __future__ import annotations

import logging
import time

from service import specs
from service.db import utcnow
from service.tables import SpecStatus, TeacherRow
from worker.runtime import Context, describe, device_for, reference_embedder

log = logging.getLogger("hubscout.worker")


def compute_spec_for(ctx: Context, teacher_id: str) -> str:
    # torch: the library loads with the worker's first job, not when the worker starts.
    from hubscout.spec import load_specification, repo_cache_dir, save_specification, specification_for
    from hubscout.teachers import Repository, TeacherNotFound

    with ctx.db.session() as s:
        row = s.get(TeacherRow, teacher_id)
        status = row.spec_status if row is not None else None
        weights_sha = row.weights_sha256 if row is not None else None
    if status != SpecStatus.PENDING:
        return "skipped"
    repo = Repository(ctx.settings.repository_dir)
    t0 = time.perf_counter()
    try:
        teacher = repo.get(teacher_id)
        if teacher.weights_sha256 != weights_sha:
            return "skipped"  # replaced meanwhile; the next sync or upload asks again
        spec = load_specification(repo, teacher_id)
        if spec is None:
            spec = specification_for(teacher, reference_embedder(ctx.settings), device=device_for(ctx.settings),
                                     probe_cache_dir=repo_cache_dir(repo))
            try:
                save_specification(repo, spec)  # the CLI and a later sync read it from the folder
            except OSError as e:
                log.warning("could not write the specification of %s beside it: %s", teacher_id, e)
        data = spec.to_bytes()
    except TeacherNotFound:
        return "skipped"
    except Exception as e:
        log.exception("specification of teacher %s failed", teacher_id)
        with ctx.db.session() as s:
            row = s.get(TeacherRow, teacher_id)
            if row is not None and row.weights_sha256 == weights_sha:
                row.spec_status, row.spec_error, row.spec_updated_at = SpecStatus.FAILED, describe(e), utcnow()
                s.commit()
        return "failed"
    with ctx.db.session() as s:
        row = s.get(TeacherRow, teacher_id)
        # Only for the weights it was computed for: a teacher replaced meanwhile keeps waiting for its own.
        if row is None or row.weights_sha256 != spec.weights_sha256:
            return "skipped"
        specs.set_ready(row, data)
        s.commit()
    log.info("specification of teacher %s (%s, %d of %d classes described) stored in %.1f s", teacher_id,
             spec.source, len(spec.rows), spec.num_classes, time.perf_counter() - t0)
    return "ready"
