from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app import services as ops
from app.auth import authenticate
from app.routes import MAX_INT, ServicesDep, problems
from app.schemas import SpecInfo, TeacherOut, TeacherPage, TeacherSummary
from app.uploads import read_multipart
from service.tables import TeacherRow

# Teachers are one catalogue shared by every key; a key is still needed to see or change it.
router = APIRouter(prefix="/v1/teachers", tags=["teachers"], dependencies=[Depends(authenticate)],
                   responses=problems(401, 503))

TEXT_FIELDS = {"arch", "name", "labels", "input", "arch_kwargs", "metadata", "id"}
FILE_FIELDS = ("weights", "spec_sample")
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["weights", "arch", "name", "labels"],
    "properties": {
        "weights": {"type": "string", "format": "binary", "description": "safetensors state dict"},
        "arch": {"type": "string", "description": "timm architecture, e.g. resnet18"},
        "name": {"type": "string"},
        "labels": {"type": "string", "description": "JSON list of label names, or one name per line"},
        "input": {"type": "string", "description": 'JSON: {"size": 224, "channels": 3, "mean": [...], '
                                                   '"std": [...]} (default: ImageNet 224)'},
        "arch_kwargs": {"type": "string", "description": "JSON object of extra timm model arguments"},
        "metadata": {"type": "string", "description": "JSON object, free form (task, source, licence...)"},
        "id": {"type": "string", "description": "default: a slug of the name"},
        "spec_sample": {"type": "string", "format": "binary",
                        "description": "optional: a labelled sample of the training data (.npz or ImageFolder "
                                       ".zip, classes among the labels; at most 50 a class are kept) from which "
                                       "the teacher's search specification is computed; without it, the "
                                       "teacher's own predictions on a fixed probe set are used"},
    }}}}}}


def _summary(row: TeacherRow) -> TeacherSummary:
    spec = SpecInfo(status=row.spec_status, source=row.spec_source, updated_at=row.spec_updated_at,
                    error=row.spec_error)
    return TeacherSummary(id=row.id, name=row.name, arch=row.arch, num_classes=row.num_classes,
                          num_params=row.num_params, weights_sha256=row.weights_sha256, input=row.input_config,
                          metadata=row.meta, spec=spec, created_at=row.created_at)


def teacher_out(row: TeacherRow) -> TeacherOut:
    return TeacherOut(**_summary(row).model_dump(), labels=row.labels, arch_kwargs=row.arch_kwargs)


@router.get("", response_model=TeacherPage[TeacherSummary], responses=problems(422))
def list_teachers(svc: ServicesDep, limit: int = Query(50, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT),
                  after: str | None = Query(None, max_length=128, description="keyset cursor: teachers whose id "
                                                                              "sorts after this one"),
                  name: str | None = Query(None, max_length=255, description="exact name"),
                  spec_status: Literal["pending", "ready", "failed"] | None = Query(
                      None, description="only teachers whose specification is in this state")
                  ) -> TeacherPage[TeacherSummary]:
    limit = min(limit, svc.settings.max_page_size)
    rows, total, more = ops.list_teachers(svc, limit, offset, name, after=after, spec_status=spec_status)
    return TeacherPage[TeacherSummary](items=[_summary(r) for r in rows], total=total, limit=limit, offset=offset,
                                       next_after=rows[-1].id if more and rows else None)


@router.get("/{teacher_id}", response_model=TeacherOut, responses=problems(404))
def get_teacher(teacher_id: str, svc: ServicesDep) -> TeacherOut:
    return teacher_out(ops.get_teacher(svc, teacher_id))


@router.post("", status_code=201, response_model=TeacherOut, openapi_extra=UPLOAD_BODY,
             responses=problems(409, 413, 415, 422), summary="Add a teacher (validated against its architecture)")
async def add_teacher(request: Request, response: Response, svc: ServicesDep) -> TeacherOut:
    s = svc.settings
    form = await read_multipart(request, svc.storage, file_limits={"weights": s.max_teacher_upload_bytes,
                                                                   "spec_sample": s.max_upload_bytes},
                                text_fields=TEXT_FIELDS, max_field_bytes=s.max_form_field_bytes,
                                chunk_bytes=s.upload_chunk_bytes)
    try:
        row = await run_in_threadpool(ops.add_teacher, svc, form.files.get("weights"), form.fields,
                                      form.files.get("spec_sample"))
    finally:
        form.cleanup()
    response.headers["Location"] = f"/v1/teachers/{row.id}"
    return teacher_out(row)


@router.delete("/{teacher_id}", status_code=204, responses=problems(404))
def delete_teacher(teacher_id: str, svc: ServicesDep) -> Response:
    ops.delete_teacher(svc, teacher_id)
    return Response(status_code=204)
