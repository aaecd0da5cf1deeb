from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app import services as ops
from app.auth import authenticate
from app.models import TeacherRow
from app.routes import MAX_INT, problems, services
from app.schemas import Page, TeacherOut, TeacherSummary
from app.services import Services
from app.uploads import read_multipart

# Teachers are one catalogue shared by every key; a key is still needed to see or change it.
router = APIRouter(prefix="/v1/teachers", tags=["teachers"], dependencies=[Depends(authenticate)],
                   responses=problems(401, 503))

TEXT_FIELDS = {"arch", "name", "labels", "input", "arch_kwargs", "metadata", "id"}
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
    }}}}}}


def _summary(row: TeacherRow) -> TeacherSummary:
    return TeacherSummary(id=row.id, name=row.name, arch=row.arch, num_classes=row.num_classes,
                          num_params=row.num_params, weights_sha256=row.weights_sha256, input=row.input_config,
                          metadata=row.meta, created_at=row.created_at)


def teacher_out(row: TeacherRow) -> TeacherOut:
    return TeacherOut(**_summary(row).model_dump(), labels=row.labels, arch_kwargs=row.arch_kwargs)


@router.get("", response_model=Page[TeacherSummary], responses=problems(422))
def list_teachers(limit: int = Query(50, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT),
                  name: str | None = Query(None, max_length=255, description="exact name"),
                  svc: Services = Depends(services)) -> Page[TeacherSummary]:
    limit = min(limit, svc.settings.max_page_size)
    rows, total = ops.list_teachers(svc, limit, offset, name)
    return Page[TeacherSummary](items=[_summary(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{teacher_id}", response_model=TeacherOut, responses=problems(404))
def get_teacher(teacher_id: str, svc: Services = Depends(services)) -> TeacherOut:
    return teacher_out(ops.get_teacher(svc, teacher_id))


@router.post("", status_code=201, response_model=TeacherOut, openapi_extra=UPLOAD_BODY,
             responses=problems(409, 413, 415, 422), summary="Add a teacher (validated against its architecture)")
async def add_teacher(request: Request, response: Response, svc: Services = Depends(services)) -> TeacherOut:
    s = svc.settings
    form = await read_multipart(request, svc.storage, file_limits={"weights": s.max_teacher_upload_bytes},
                                text_fields=TEXT_FIELDS, max_field_bytes=s.max_form_field_bytes,
                                chunk_bytes=s.upload_chunk_bytes)
    try:
        row = await run_in_threadpool(ops.add_teacher, svc, form.files.get("weights"), form.fields)
    finally:
        form.cleanup()
    response.headers["Location"] = f"/v1/teachers/{row.id}"
    return teacher_out(row)


@router.delete("/{teacher_id}", status_code=204, responses=problems(404))
def delete_teacher(teacher_id: str, svc: Services = Depends(services)) -> Response:
    ops.delete_teacher(svc, teacher_id)
    return Response(status_code=204)
