"""A distillation job: weigh the teachers, distil, store the student's folder as one zip."""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

from service import jobs
from service.tables import DatasetRow, JobRow, StudentRow, json_safe, result_id_for
from worker.runtime import Context, Reporter, device_for, load_dataset, retry_db
from worker.stores import DbOutputsCache


def _zip_folder(folder: Path, dest: Path) -> None:
    # Files at the archive's root: `unzip -d DIR` then load_student(DIR).
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            if p.is_file():
                zf.write(p, p.name)


def run_distillation(ctx: Context, claim: jobs.Claim, job: JobRow, dataset: DatasetRow, report: Reporter) -> None:
    # torch: the library loads with the worker's first job, not when the worker starts.
    from hubscout.distill import DistillConfig, distill
    from hubscout.rank import weigh_teachers
    from hubscout.teachers import Repository

    params = job.params
    report(0.0, "loading dataset")
    ds = load_dataset(ctx, dataset)
    repo = Repository(ctx.settings.repository_dir)
    ids = list(params.get("teacher_ids") or [])
    cfg = DistillConfig.from_dict(params["config"])
    device = device_for(ctx.settings)
    if len(ids) > 1 and not cfg.ce_only:
        report(0.0, "weighting teachers by relatedness")
    mixture, relatedness = weigh_teachers(ds, repo, ids, ce_only=cfg.ce_only, device=device,
                                          cache=DbOutputsCache(ctx.db, ctx.storage, owner=job.owner))
    student = distill(ds, repo, ids, cfg, mixture=mixture, relatedness=relatedness, device=device,
                      on_progress=report.scaled(0.05, 0.95), on_epoch=report.curves)
    report(0.96, "saving the student")
    sid = result_id_for(job.id)
    key = f"students/{sid}.zip"
    scratch = ctx.storage.tmp_path()
    try:
        scratch.mkdir(parents=True)
        folder = student.save(scratch / "student")
        archive = scratch / "student.zip"
        _zip_folder(folder, archive)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        size = archive.stat().st_size
        with ctx.storage.writer(key) as f, open(archive, "rb") as src:
            shutil.copyfileobj(src, f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row = StudentRow(id=sid, job_id=job.id, dataset_id=dataset.id, teacher_ids=ids, student_arch=cfg.student_arch,
                     config=json_safe(student.config_dict()), metrics=json_safe(student.metrics), archive_key=key,
                     archive_bytes=size, archive_sha256=digest)
    def record() -> None:
        with ctx.db.session() as s:
            s.merge(row)
            if not jobs.finish(s, claim, sid, curves=row.metrics.get("curves")):
                s.rollback()
                ctx.storage.delete(key)  # cancelled while saving: leave nothing behind
                raise jobs.JobLost(job.id)
            s.commit()

    retry_db(ctx, record)
