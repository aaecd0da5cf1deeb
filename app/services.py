"""What the routes do, kept out of the routes: ingesting uploads, adding teachers, creating and reading jobs.

Every operation validates fully before it writes, and cleans up what it wrote if a later step fails, so a bad
request leaves nothing half-stored.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError

from app.problems import Problem, not_found
from app.schemas import DemoDatasetCreate, DistillationCreate, RankingCreate, TeacherCreate
from app.uploads import UploadedFile
from service import jobs, webhooks
from service.container import Services
from service.settings import Settings
from service.tables import (CallbackState, DatasetRow, JobKind, JobRow, JobStatus, RankingRow, StudentRow, TeacherRow,
                            json_safe, new_id)
from service.teacher_sync import OWNER_FILE, row_from_teacher

log = logging.getLogger("hubscout.api")


def auth_required(settings: Settings) -> bool:
    return bool(settings.all_keys)


def info(svc: Services) -> dict[str, Any]:
    from hubscout.options import DEFAULT_STUDENT_RULE, size_listing
    from hubscout.scores import DEFAULT_METRICS, METRICS

    s = svc.settings
    return {"version": _version(), "auth_required": auth_required(s),
            "mode": "embedded" if s.embedded else "distributed", "metrics": list(METRICS),
            "default_metrics": list(DEFAULT_METRICS),
            "max_upload_bytes": s.max_upload_bytes, "max_epochs": s.max_epochs,
            "student_sizes": size_listing(), "default_student": DEFAULT_STUDENT_RULE,
            "repository": repository_state(s)}


def repository_state(settings) -> dict[str, Any]:
    from service import zoo_build

    p = zoo_build.progress(settings)
    return p.to_dict() if p is not None else {"state": "ready"}


def _version() -> str:
    import hubscout

    return hubscout.__version__


def _invalid(detail: str, **ext: Any) -> Problem:
    return Problem(422, detail, type_="validation-error", title="Invalid request", **ext)


# ------------------------------------------------------------------------------------------------- datasets

def _display_name(name: str) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name[:255]


def ingest_dataset(svc: Services, upload: UploadedFile, name: str, owner: str) -> tuple[DatasetRow, bool]:
    """Parse an uploaded file into a dataset and store it in canonical form (npz) once per content hash and
    owner. Returns (row, created)."""
    from hubscout.data import DatasetError, DatasetTooLarge, Limits, load_dataset

    s = svc.settings
    limits = Limits(max_samples=s.max_samples, max_classes=s.max_classes, max_side=s.max_image_side,
                    max_pixels=s.max_decoded_bytes)
    try:
        ds = load_dataset(upload.path, limits=limits, name=_display_name(name))
    except DatasetTooLarge as e:
        raise Problem(413, str(e), type_="dataset-too-large", title="Dataset too large", limit=e.limit) from None
    except DatasetError as e:
        raise Problem(422, str(e), type_="invalid-dataset", title="Invalid dataset") from None
    return _store_dataset(svc, ds, upload.size, owner)


def demo_targets() -> list[dict[str, Any]]:
    from hubscout.sources import TARGETS

    return [{"name": t.name, "description": t.description, "classes": t.classes} for t in TARGETS.values()]


def create_demo_dataset(svc: Services, body: DemoDatasetCreate, owner: str) -> tuple[DatasetRow, bool]:
    """A dataset drawn from a built-in demo target, stored as an upload of it would be. Returns (row, created)."""
    from hubscout.data import DatasetError
    from hubscout.sources import TARGETS, demo_target

    target = TARGETS.get(body.name)
    if target is None:
        raise _invalid(f"unknown demo target {body.name!r}; known: {', '.join(TARGETS)}", known=list(TARGETS))
    if body.shots * len(target.classes) > svc.settings.max_samples:
        raise _invalid(f"{body.shots} shots of {len(target.classes)} classes is more than the "
                       f"{svc.settings.max_samples} samples a dataset may hold")
    try:
        ds = demo_target(body.name, shots=body.shots, seed=body.seed)
    except DatasetError as e:  # the source's files are not installed on this server
        log.warning("demo target %s unavailable: %s", body.name, e)
        raise Problem(503, f"the data of demo target {body.name!r} is not installed on this server",
                      type_="demo-data-unavailable", title="Service unavailable") from None
    except ValueError as e:  # more shots than the smallest class has
        raise _invalid(str(e)) from None
    return _store_dataset(svc, ds, 0, owner)


def _store_dataset(svc: Services, ds, upload_bytes: int, owner: str) -> tuple[DatasetRow, bool]:
    """Store ``ds`` in canonical form (npz) once per content hash and owner; each name it is sent under gets its
    own row (the name is the request's, the stored file is shared). Returns (row, created)."""
    sha = ds.sha256
    same = (DatasetRow.owner == owner, DatasetRow.sha256 == sha)
    with svc.db.session() as sess:
        existing = sess.scalar(select(DatasetRow).where(*same, DatasetRow.name == ds.name))
        stored = existing or sess.scalar(select(DatasetRow).where(*same).order_by(DatasetRow.created_at).limit(1))
    if existing is not None:
        return existing, False

    dataset_id = new_id("ds_")
    key = stored.storage_key if stored is not None else f"datasets/{dataset_id}.npz"
    tmp = svc.storage.tmp_path().with_suffix(".npz")
    wrote = False
    try:
        if stored is None:
            dest = svc.storage.path(key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            ds.save(tmp)
            os.replace(tmp, dest)
            wrote = True
        size = svc.storage.path(key).stat().st_size
        row = DatasetRow(id=dataset_id, owner=owner, sha256=sha, name=ds.name, n_samples=len(ds),
                         num_classes=ds.num_classes, classes=list(ds.classes), class_counts=ds.class_counts(),
                         image_shape=[int(x) for x in ds.images.shape[1:]], storage_key=key, size_bytes=size,
                         upload_bytes=upload_bytes)
        with svc.db.session() as sess:
            sess.add(row)
            try:
                sess.commit()
                return row, True
            except IntegrityError:
                sess.rollback()  # the same content and name uploaded concurrently: keep the other copy
        if wrote:
            svc.storage.delete(key)
        with svc.db.session() as sess:
            other = sess.scalar(select(DatasetRow).where(*same, DatasetRow.name == ds.name))
        if other is None:
            raise RuntimeError("dataset insert failed without a conflicting row")
        return other, False
    except BaseException:
        tmp.unlink(missing_ok=True)
        if wrote:
            svc.storage.delete(key)
        raise


def _get_row(svc: Services, model, kind: str, row_id: str, owner: str | None = None):
    """One row by primary key, or the 404 problem naming what was not found. With ``owner``, another owner's row
    is not found either: the answer must not tell that it exists."""
    with svc.db.session() as s:
        if owner is None:
            row = s.get(model, row_id)
        elif hasattr(model, "owner"):
            row = s.scalar(select(model).where(model.id == row_id, model.owner == owner))
        else:  # a result: owned through its job
            row = s.scalar(select(model).join(JobRow, JobRow.id == model.job_id)
                           .where(model.id == row_id, JobRow.owner == owner))
    if row is None:
        raise not_found(kind, row_id)
    return row


def get_dataset(svc: Services, dataset_id: str, owner: str) -> DatasetRow:
    return _get_row(svc, DatasetRow, "dataset", dataset_id, owner)


# ------------------------------------------------------------------------------------------------- teachers

# timm.create_model reads files (checkpoint_path, pretrained_cfg with a file, cache_dir) from some keyword
# arguments; none of that may be steered by a request.
_FORBIDDEN_KWARG = re.compile(r"pretrained|checkpoint|path|file|dir|url|cfg|hub", re.IGNORECASE)


def _check_arch_kwargs(kwargs: dict[str, Any]) -> None:
    for k, v in kwargs.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", k) or _FORBIDDEN_KWARG.search(k):
            raise _invalid(f"arch_kwargs: {k!r} is not an accepted architecture argument")
        if not _plain_value(v):
            raise _invalid(f"arch_kwargs: {k!r} must be a number, a boolean, a short name or a list of those")


def _plain_value(v: Any, depth: int = 0) -> bool:
    if v is None or isinstance(v, (bool, int, float)):
        return True
    if isinstance(v, str):
        return re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", v) is not None
    if isinstance(v, list) and depth < 2 and len(v) <= 64:
        return all(_plain_value(x, depth + 1) for x in v)
    return False


def _parse_teacher_fields(fields: dict[str, str], max_depth: int) -> TeacherCreate:
    from app.bodies import MalformedJSON, loads

    data: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("input", "arch_kwargs", "metadata"):
            try:
                data[key] = loads(value, max_depth)
            except MalformedJSON as e:
                raise _invalid(f"{key}: not valid JSON ({e})") from None
        elif key == "labels":
            text = value.strip()
            if text.startswith("["):
                try:
                    data[key] = loads(text, max_depth)
                except MalformedJSON as e:
                    raise _invalid(f"labels: not valid JSON ({e})") from None
            else:
                data[key] = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            data[key] = value
    try:
        return TeacherCreate.model_validate(data)
    except ValidationError as e:
        errors = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
        detail = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'request'}: {x['msg']}" for x in errors[:5])
        raise _invalid(detail, errors=errors) from None


def _spec_sample(svc: Services, upload: UploadedFile, labels: list[str]):
    """The optional labelled training sample of a teacher upload, validated and cut to what a specification
    uses; 422 if it is not a dataset of the teacher's classes."""
    from hubscout.data import DatasetError, Limits, load_dataset
    from hubscout.sources import sample_per_class
    from hubscout.spec import SPEC_SAMPLES_PER_CLASS

    s = svc.settings
    limits = Limits(max_samples=s.max_samples, max_classes=s.max_classes, max_side=s.max_image_side,
                    max_pixels=s.max_decoded_bytes)
    try:
        ds = load_dataset(upload.path, limits=limits)
    except DatasetError as e:
        raise _invalid(f"spec_sample: {e}") from None
    unknown = [c for c in ds.classes if c not in set(labels)]
    if unknown:
        raise _invalid(f"spec_sample: classes not among the teacher's labels: {', '.join(unknown[:10])}")
    return sample_per_class(ds, SPEC_SAMPLES_PER_CLASS, seed=0)


def add_teacher(svc: Services, upload: UploadedFile | None, fields: dict[str, str],
                spec_upload: UploadedFile | None = None, *, owner: str, admin: bool,
                replace: str | None = None) -> TeacherRow:
    """Validate and store a teacher (and its optional spec sample); its specification is computed by a worker,
    so the request does not wait for it. An admin's upload joins the shared catalogue, anyone else's belongs to
    its key. ``replace``: the id of a teacher the caller may change, stored anew under that id."""
    from service import specs
    from hubscout.spec import SPEC_SAMPLE_FILE
    from hubscout.teachers import InputConfig, TeacherError, slugify

    if upload is None:
        raise _invalid("no file part named 'weights' (a safetensors state dict)")
    body = _parse_teacher_fields(fields, svc.settings.max_json_depth)
    _check_arch_kwargs(body.arch_kwargs)
    sample = _spec_sample(svc, spec_upload, body.labels) if spec_upload is not None else None
    repo = svc.repository
    existing = None
    if replace is not None:
        if body.id is not None and body.id != replace:
            raise _invalid(f"id: {body.id!r} differs from the teacher replaced, {replace!r}")
        existing = _changeable_teacher(svc, replace, owner, admin)
        teacher_id = replace
    else:
        teacher_id = body.id or slugify(body.name)
        if teacher_id in repo:
            raise Problem(409, f"teacher {teacher_id!r} already exists", type_="conflict", title="Conflict")
    try:
        input_cfg = InputConfig(body.input.size, body.input.channels, tuple(body.input.mean), tuple(body.input.std))
        teacher = repo.add(arch=body.arch, weights=upload.path, labels=body.labels, name=body.name, input=input_cfg,
                           arch_kwargs=body.arch_kwargs, metadata=body.metadata, teacher_id=teacher_id,
                           overwrite=replace is not None, max_params=svc.settings.max_teacher_params)
    except TeacherError as e:
        if "already exists" in str(e):
            raise Problem(409, str(e), type_="conflict", title="Conflict") from None
        raise Problem(422, str(e), type_="invalid-teacher", title="Invalid teacher") from None
    # A replaced teacher keeps its owner; a new one is the uploader's, or shared when an admin uploads it.
    if replace is not None:
        row_owner = existing.owner if existing is not None else None
    else:
        row_owner = None if admin else owner
    try:
        if sample is not None:
            sample.save(repo.root / teacher.id / SPEC_SAMPLE_FILE)
        if row_owner is not None:
            (repo.root / teacher.id / OWNER_FILE).write_text(row_owner)
        with svc.db.session() as s:
            row = row_from_teacher(teacher)
            row.owner = row_owner
            specs.set_pending(row, requested=True)
            row = s.merge(row)
            s.commit()
    except BaseException:
        if replace is None:
            repo.remove(teacher.id)  # the folder and the table stay in step
        raise
    try:
        svc.queue.enqueue_spec(teacher.id)
    except Exception:
        # The teacher is stored and rankable; the workers' sweep asks again once the request is stale.
        log.warning("could not request the specification of %s now", teacher.id, exc_info=True)
    return row


def list_teachers(svc: Services, limit: int, offset: int, name: str | None, *, after: str | None = None,
                  spec_status: str | None = None, owner: str, admin: bool = False
                  ) -> tuple[list[TeacherRow], int, bool]:
    """A page of the teachers this key sees, in id order (index-backed: primary key, ``ix_teachers_name``,
    ``ix_teachers_spec_status_id``), the total matching, and whether more follow."""
    page, count = teacher_page_queries(limit, offset, name, after, spec_status, visible=TeacherRow.visible_to(
        owner, admin))
    with svc.db.session() as s:
        total = s.scalar(count) or 0
        rows = list(s.scalars(page))
    more = len(rows) > limit
    return rows[:limit], total, more


def teacher_page_queries(limit: int, offset: int, name: str | None = None, after: str | None = None,
                         spec_status: str | None = None, visible=None):
    """(page query fetching limit + 1 rows, count query) of ``GET /v1/teachers``; the bytes of specifications
    are never loaded here (deferred column)."""
    q = select(TeacherRow)
    c = select(func.count()).select_from(TeacherRow)
    for cond in ([TeacherRow.name == name] if name else []) + (
            [TeacherRow.spec_status == spec_status] if spec_status else []) + ([visible] if visible is not None
                                                                                else []):
        q, c = q.where(cond), c.where(cond)
    if after is not None:
        q = q.where(TeacherRow.id > after)
    return q.order_by(TeacherRow.id).limit(limit + 1).offset(offset), c


def get_teacher(svc: Services, teacher_id: str, owner: str, admin: bool = False) -> TeacherRow:
    with svc.db.session() as s:
        row = s.scalar(select(TeacherRow).where(TeacherRow.id == teacher_id, TeacherRow.visible_to(owner, admin)))
    if row is None:
        raise not_found("teacher", teacher_id)
    return row


def _changeable_teacher(svc: Services, teacher_id: str, owner: str, admin: bool) -> TeacherRow | None:
    """The row of a teacher this key may delete or replace: its own, or any with an admin key. Another key's
    teacher is not found (the answer must not tell it exists); the shared catalogue's is a 403."""
    with svc.db.session() as s:
        row = s.get(TeacherRow, teacher_id)
    if row is None:
        if admin and teacher_id in svc.repository:
            return None  # in the folder, not yet mirrored
        raise not_found("teacher", teacher_id)
    if admin or row.owner == owner:
        return row
    if row.owner is None:
        raise Problem(403, f"teacher {teacher_id!r} belongs to the shared catalogue: only an admin key "
                           f"(HUBSCOUT_ADMIN_KEYS) changes it", type_="forbidden", title="Forbidden")
    raise not_found("teacher", teacher_id)


def delete_teacher(svc: Services, teacher_id: str, owner: str, admin: bool = False) -> None:
    from hubscout.teachers import TeacherNotFound

    row = _changeable_teacher(svc, teacher_id, owner, admin)
    repo = svc.repository
    with svc.db.session() as s:
        if teacher_id in repo:
            try:
                repo.remove(teacher_id)
            except TeacherNotFound:
                pass
        if row is not None:
            s.execute(delete(TeacherRow).where(TeacherRow.id == teacher_id))
        s.commit()


# ------------------------------------------------------------------------------------------------- jobs

def _check_teachers(svc: Services, teacher_ids: list[str], owner: str) -> None:
    from app.auth import is_admin

    visible = TeacherRow.visible_to(owner, is_admin(svc.settings, owner))
    with svc.db.session() as s:
        known = set(s.scalars(select(TeacherRow.id).where(TeacherRow.id.in_(teacher_ids), visible)))
    unknown = [t for t in teacher_ids if t not in known]
    if unknown:
        raise _invalid(f"unknown teacher(s): {', '.join(unknown[:20])}", unknown_teachers=unknown)


def _check_callback(svc: Services, callback_url: str | None) -> None:
    if callback_url and not svc.settings.webhook_secret:
        raise _invalid("callback_url: this server has no webhook secret (HUBSCOUT_WEBHOOK_SECRET), so it could not "
                       "sign the call; ask its operator to set one")


# SQLite (the embedded default) has one API process: a lock in it makes count-then-insert atomic. PostgreSQL
# serves several API processes: there an advisory lock per owner does.
_job_limit_lock = threading.Lock()


def _owner_lock_id(owner: str) -> int:
    return int.from_bytes(hashlib.sha256(f"job-limit:{owner}".encode()).digest()[:8], "big", signed=True)


def _create_job(svc: Services, kind: str, dataset_id: str, params: dict[str, Any], owner: str,
                callback_url: str | None = None) -> JobRow:
    limit = svc.settings.max_active_jobs_per_key
    job = JobRow(id=new_id("job_"), owner=owner, kind=kind, status=JobStatus.QUEUED, progress=0.0,
                 message="queued", params=json_safe(params), dataset_id=dataset_id, attempts=0,
                 callback_url=callback_url, callback_state=CallbackState.WAITING if callback_url else None,
                 callback_attempts=0)
    local_lock = _job_limit_lock if svc.settings.is_sqlite else nullcontext()
    with local_lock, svc.db.session() as s:
        if not svc.settings.is_sqlite:
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _owner_lock_id(owner)})
        active = s.scalar(select(func.count()).select_from(JobRow).where(
            JobRow.owner == owner, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))
        if active >= limit:
            raise Problem(429, f"this key already has {active} queued or running jobs, the limit is {limit}; "
                               f"wait for one to finish (or cancel one)", type_="too-many-jobs",
                          title="Too many jobs", headers={"Retry-After": "30"}, limit=limit)
        s.add(job)
        s.commit()
    try:
        jobs.resend(svc.db, job.id, svc.queue.enqueue)
    except Exception:
        log.warning("could not enqueue job %s; it is withdrawn", job.id, exc_info=True)
        # Not accepted, so not kept: the client is told to try again, and no job lingers that nobody will run.
        with svc.db.session() as s:
            s.execute(delete(JobRow).where(JobRow.id == job.id, JobRow.status == JobStatus.QUEUED))
            s.commit()
        raise Problem(503, "the job queue is unavailable; try again later", type_="queue-unavailable",
                      title="Service unavailable", headers={"Retry-After": "5"}) from None
    return get_job(svc, job.id, owner, sweep=False)


def _require_dataset(svc: Services, dataset_id: str, owner: str) -> DatasetRow:
    with svc.db.session() as s:
        row = s.scalar(select(DatasetRow).where(DatasetRow.id == dataset_id, DatasetRow.owner == owner))
    if row is None:
        raise _invalid(f"dataset {dataset_id!r} does not exist (upload it with POST /v1/datasets)")
    return row


def create_ranking(svc: Services, body: RankingCreate, owner: str) -> JobRow:
    _require_dataset(svc, body.dataset_id, owner)
    _check_callback(svc, body.callback_url)
    if body.teacher_ids is not None:
        _check_teachers(svc, body.teacher_ids, owner)
    else:
        with svc.db.session() as s:
            if not s.scalar(select(func.count()).select_from(TeacherRow).where(TeacherRow.visible_to(owner))):
                raise Problem(409, "the teacher repository is empty", type_="conflict", title="Conflict")
    # Left out: the service's default; null or 0: exhaustive. The worker shortlists only when there are more
    # candidates than k.
    k = body.shortlist if "shortlist" in body.model_fields_set else svc.settings.shortlist_k
    params = {"metrics": body.metrics, "teacher_ids": body.teacher_ids, "top_k": body.top_k,
              "shortlist": k or None, "exhaustive_max": svc.settings.exhaustive_max_teachers}
    return _create_job(svc, JobKind.RANKING, body.dataset_id, params, owner, body.callback_url)


def create_distillation(svc: Services, body: DistillationCreate, owner: str) -> JobRow:
    from hubscout.distill import DistillConfig

    dataset = _require_dataset(svc, body.dataset_id, owner)
    _check_callback(svc, body.callback_url)
    if not body.teacher_ids and not body.ce_only:
        raise _invalid("teacher_ids: name at least one teacher (or set ce_only)")
    if body.teacher_ids:
        _check_teachers(svc, body.teacher_ids, owner)
    if body.epochs is not None and body.epochs > svc.settings.max_epochs:
        raise _invalid(f"epochs: at most {svc.settings.max_epochs}")
    overrides = {k: v for k, v in body.model_dump(include={"student_arch", "epochs", "min_steps", "lam", "tau",
                                                           "reg"}).items() if v is not None}
    try:
        # The service's epoch cap holds whatever epochs and min_steps ask (the result says when it cut).
        config = DistillConfig.from_dict({**DistillConfig().to_dict(), **overrides, "ce_only": body.ce_only,
                                          "seed": body.seed, "max_epochs": svc.settings.max_epochs})
    except ValueError as e:
        raise _invalid(str(e)) from None
    student = _choose_student(svc, config, dataset, [] if body.ce_only else body.teacher_ids)
    # The config keeps the student as asked ("auto", a size): the worker applies the same rule to the same
    # teachers; ``student`` says now what it will be.
    params = {"teacher_ids": body.teacher_ids, "config": config.to_dict(), "student": student}
    return _create_job(svc, JobKind.DISTILLATION, body.dataset_id, params, owner, body.callback_url)


def _choose_student(svc: Services, config, dataset: DatasetRow, teacher_ids: list[str]) -> dict[str, Any]:
    """The student a distillation gets, refused with a 422 when it cannot take the dataset's images."""
    from hubscout.students import StudentError, fit_student

    with svc.db.session() as s:
        rows = s.execute(select(TeacherRow.id, TeacherRow.num_params).where(TeacherRow.id.in_(teacher_ids)))
        sizes = {tid: n for tid, n in rows}
    try:
        choice = fit_student(config.student_arch, config.student_kwargs, dataset.num_classes, dataset.image_shape,
                             config.input_size, [sizes[t] for t in teacher_ids if t in sizes])
    except StudentError as e:
        raise _invalid(f"student_arch: {e}") from None
    return choice.to_dict()


def get_job(svc: Services, job_id: str, owner: str, sweep: bool = True) -> JobRow:
    row = _get_row(svc, JobRow, "job", job_id, owner)
    if sweep and row.status == JobStatus.RUNNING:
        # A reader may be the first to notice that a worker died; recovering here means no job stays
        # "running" for ever even when every worker is gone.
        if jobs.sweep(svc.db, svc.settings, svc.queue.enqueue, job_ids=[job_id]):
            row = _get_row(svc, JobRow, "job", job_id, owner)
    return row


QUEUE_AHEAD_SHOWN = 10


def queue_info(svc: Services, row: JobRow, owner: str) -> dict[str, Any] | None:
    """What the workers take before queued job ``row``: the running jobs and the queued ones created earlier (any
    owner's: they share the workers, but only the caller's are named)."""
    if row.status != JobStatus.QUEUED:
        return None
    with svc.db.session() as s:
        running = list(s.scalars(select(JobRow).where(JobRow.status == JobStatus.RUNNING)
                                 .order_by(JobRow.started_at).limit(QUEUE_AHEAD_SHOWN)))
        earlier = (JobRow.status == JobStatus.QUEUED, JobRow.created_at < row.created_at)
        n_ahead = s.scalar(select(func.count()).select_from(JobRow).where(*earlier)) or 0
        ahead = list(s.scalars(select(JobRow).where(*earlier).order_by(JobRow.created_at)
                               .limit(QUEUE_AHEAD_SHOWN)))

    def brief(j: JobRow) -> dict[str, Any]:
        return {"kind": j.kind, "status": j.status, "progress": round(j.progress or 0.0, 3),
                "id": j.id if j.owner == owner else None}

    return {"position": n_ahead + 1, "queued_ahead": n_ahead, "running": [brief(j) for j in running],
            "ahead": [brief(j) for j in ahead]}


def list_jobs(svc: Services, limit: int, offset: int, status: str | None, kind: str | None, owner: str
              ) -> tuple[list[JobRow], int]:
    jobs.sweep(svc.db, svc.settings, svc.queue.enqueue, limit=20)
    with svc.db.session() as s:
        q = select(JobRow).where(JobRow.owner == owner)
        c = select(func.count()).select_from(JobRow).where(JobRow.owner == owner)
        if status:
            q, c = q.where(JobRow.status == status), c.where(JobRow.status == status)
        if kind:
            q, c = q.where(JobRow.kind == kind), c.where(JobRow.kind == kind)
        total = s.scalar(c) or 0
        rows = list(s.scalars(q.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit).offset(offset)))
    return rows, total


def cancel_job(svc: Services, job_id: str, owner: str) -> JobRow:
    row = get_job(svc, job_id, owner, sweep=False)
    if not jobs.cancel(svc.db, job_id):
        row = get_job(svc, job_id, owner, sweep=False)
        raise Problem(409, f"job {job_id!r} is already {row.status}", type_="conflict", title="Conflict",
                      job_status=row.status)
    if row.status == JobStatus.QUEUED:
        # Spares a worker from picking the message up; a running task stops by itself at its next check.
        svc.queue.revoke(row.task_id)
    try:
        webhooks.dispatch(svc.db, svc.queue.enqueue_webhook, [job_id])
    except Exception:  # the workers' periodic sweep sends it later; the cancel itself has succeeded
        log.warning("could not dispatch the webhook of cancelled job %s", job_id, exc_info=True)
    return get_job(svc, job_id, owner, sweep=False)


def get_ranking(svc: Services, ranking_id: str, owner: str) -> RankingRow:
    return _get_row(svc, RankingRow, "ranking", ranking_id, owner)


def get_student(svc: Services, student_id: str, owner: str) -> StudentRow:
    return _get_row(svc, StudentRow, "student", student_id, owner)


def student_archive(svc: Services, student_id: str, owner: str) -> tuple[StudentRow, Path]:
    row = get_student(svc, student_id, owner)
    path = svc.storage.path(row.archive_key)
    if not path.is_file():
        raise Problem(410, f"the archive of student {student_id!r} is missing from storage", type_="gone",
                      title="Gone")
    return row, path
