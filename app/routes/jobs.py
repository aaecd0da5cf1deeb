from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from app import idempotency
from app import services as ops
from app.auth import Owner, authenticate
from app.routes import MAX_INT, ServicesDep, body_of, problems, require_json, teachers_ready
from app.schemas import CallbackOut, DistillationCreate, JobLinks, JobOut, Page, RankingCreate, RankingOut, StudentOut
from service.db import utcnow
from service.tables import JobKind, JobRow, JobStatus

router = APIRouter(tags=["jobs"], dependencies=[Depends(authenticate)], responses=problems(401, 503))

RESULT_PATHS = {JobKind.RANKING: "/v1/rankings/", JobKind.DISTILLATION: "/v1/students/"}


def _seconds(start, end) -> float | None:
    return None if start is None else round(max((end or utcnow()) - start, dt.timedelta(0)).total_seconds(), 2)


def job_out(row: JobRow, queue: dict | None = None) -> JobOut:
    result = RESULT_PATHS[row.kind] + row.result_id if row.result_id and row.status == JobStatus.SUCCEEDED else None
    # A job cancelled before it started waited until it was cancelled.
    queued_until = row.started_at or (row.finished_at if row.status in JobStatus.FINAL else None)
    return JobOut(id=row.id, kind=row.kind, status=row.status, progress=round(row.progress, 3), message=row.message,
                  dataset_id=row.dataset_id, params=row.params, error=row.error, attempts=row.attempts,
                  result_id=row.result_id if result else None, created_at=row.created_at,
                  started_at=row.started_at, finished_at=row.finished_at, curves=row.curves,
                  links=JobLinks(self=f"/v1/jobs/{row.id}", result=result),
                  callback=CallbackOut(url=row.callback_url, state=row.callback_state, attempts=row.callback_attempts,
                                       last_error=row.callback_error, done_at=row.callback_done_at)
                  if row.callback_url else None,
                  queued_s=_seconds(row.created_at, queued_until),
                  computing_s=_seconds(row.started_at, row.finished_at), queue=queue)


def _accepted(row: JobRow) -> idempotency.Created:
    return idempotency.Created(202, job_out(row), f"/v1/jobs/{row.id}")


@router.post("/v1/rankings", status_code=202, response_model=JobOut, responses=problems(409, 413, 415, 422, 429),
             dependencies=[Depends(require_json), Depends(teachers_ready)],
             openapi_extra=idempotency.DOC,
             summary="Rank teachers for a dataset (asynchronous: poll the job)")
async def create_ranking(body: RankingCreate, request: Request, owner: Owner, svc: ServicesDep) -> JSONResponse:
    return await idempotency.run(request, svc, owner, idempotency.fingerprint(request, body_of(body)),
                                 lambda: _accepted(ops.create_ranking(svc, body, owner)))


@router.post("/v1/distillations", status_code=202, response_model=JobOut,
             responses=problems(409, 413, 415, 422, 429),
             dependencies=[Depends(require_json), Depends(teachers_ready)],
             openapi_extra=idempotency.DOC, summary="Distil a student from teachers (asynchronous: poll the job)")
async def create_distillation(body: DistillationCreate, request: Request, owner: Owner,
                              svc: ServicesDep) -> JSONResponse:
    return await idempotency.run(request, svc, owner, idempotency.fingerprint(request, body_of(body)),
                                 lambda: _accepted(ops.create_distillation(svc, body, owner)))


@router.get("/v1/jobs", response_model=Page[JobOut], responses=problems(422))
def list_jobs(limit: int = Query(50, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT),
              status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              kind: Literal["ranking", "distillation"] | None = None, *, owner: Owner,
              svc: ServicesDep) -> Page[JobOut]:
    limit = min(limit, svc.settings.max_page_size)
    rows, total = ops.list_jobs(svc, limit, offset, status, kind, owner)
    return Page[JobOut](items=[job_out(r, ops.queue_info(svc, r, owner)) for r in rows], total=total, limit=limit,
                        offset=offset)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=problems(404))
def get_job(job_id: str, owner: Owner, svc: ServicesDep) -> JobOut:
    row = ops.get_job(svc, job_id, owner)
    return job_out(row, ops.queue_info(svc, row, owner))


@router.delete("/v1/jobs/{job_id}", response_model=JobOut, responses=problems(404, 409),
               summary="Cancel a queued or running job")
def cancel_job(job_id: str, owner: Owner, svc: ServicesDep) -> JobOut:
    return job_out(ops.cancel_job(svc, job_id, owner))


@router.get("/v1/rankings/{ranking_id}", response_model=RankingOut, responses=problems(404),
            tags=["results"])
def get_ranking(ranking_id: str, owner: Owner, svc: ServicesDep) -> RankingOut:
    row = ops.get_ranking(svc, ranking_id, owner)
    return RankingOut(**row.result, id=row.id, job_id=row.job_id, dataset_id=row.dataset_id,
                      created_at=row.created_at)


@router.get("/v1/students/{student_id}", response_model=StudentOut, responses=problems(404), tags=["results"])
def get_student(student_id: str, owner: Owner, svc: ServicesDep) -> StudentOut:
    row = ops.get_student(svc, student_id, owner)
    return StudentOut(id=row.id, job_id=row.job_id, dataset_id=row.dataset_id, teacher_ids=row.teacher_ids,
                      student_arch=row.student_arch, config=row.config, metrics=row.metrics,
                      val_accuracy=row.metrics.get("val_accuracy"), ce_only=row.metrics.get("ce_only"),
                      gain_vs_ce=row.metrics.get("gain_vs_ce"), student=row.metrics.get("student"),
                      schedule=row.metrics.get("schedule"), archive_bytes=row.archive_bytes,
                      archive_sha256=row.archive_sha256,
                      created_at=row.created_at, download=f"/v1/students/{row.id}/download")


@router.get("/v1/students/{student_id}/download", tags=["results"], response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "The student folder (model.safetensors, config.json, metrics.json, "
                                            "labels.json, model.onnx, MODEL_CARD.md) as a zip; unzip and load "
                                            "with hubscout.distill.load_student, or run model.onnx."},
                       **problems(404, 410)})
def download_student(student_id: str, owner: Owner, svc: ServicesDep) -> FileResponse:
    row, path = ops.student_archive(svc, student_id, owner)
    return FileResponse(path, media_type="application/zip", filename=f"student-{row.id}.zip",
                        headers={"ETag": f'"{row.archive_sha256}"'})
