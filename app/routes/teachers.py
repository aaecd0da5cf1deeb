from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from app import idempotency
from app import services as ops
from app.auth import Owner, authenticate, is_admin
from app.routes import MAX_INT, ServicesDep, problems, teachers_ready
from app.schemas import SpecInfo, TeacherOut, TeacherPage, TeacherSummary
from app.uploads import read_multipart
from service.container import Services
from service.tables import TeacherRow

# Every key sees the shared catalogue (the demo repository, admin uploads) and its own uploads; only the owner or
# an admin key (HUBSCOUT_ADMIN_KEYS) changes a teacher, only an admin the shared ones.
router = APIRouter(prefix="/v1/teachers", tags=["teachers"],
                   dependencies=[Depends(authenticate), Depends(teachers_ready)],
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
                      None, description="only teachers whose specification is in this state"),
                  *, owner: Owner) -> TeacherPage[TeacherSummary]:
    limit = min(limit, svc.settings.max_page_size)
    rows, total, more = ops.list_teachers(svc, limit, offset, name, after=after, spec_status=spec_status,
                                          owner=owner, admin=is_admin(svc.settings, owner))
    return TeacherPage[TeacherSummary](items=[_summary(r) for r in rows], total=total, limit=limit, offset=offset,
                                       next_after=rows[-1].id if more and rows else None)


@router.get("/{teacher_id}", response_model=TeacherOut, responses=problems(404))
def get_teacher(teacher_id: str, owner: Owner, svc: ServicesDep) -> TeacherOut:
    return teacher_out(ops.get_teacher(svc, teacher_id, owner, is_admin(svc.settings, owner)))


async def _upload(request: Request, owner: str, svc: Services, replace: str | None = None) -> JSONResponse:
    s = svc.settings
    form = await read_multipart(request, svc.storage, file_limits={"weights": s.max_teacher_upload_bytes,
                                                                   "spec_sample": s.max_upload_bytes},
                                text_fields=TEXT_FIELDS, max_field_bytes=s.max_form_field_bytes,
                                chunk_bytes=s.upload_chunk_bytes)
    admin = is_admin(s, owner)

    def create() -> idempotency.Created:
        row = ops.add_teacher(svc, form.files.get("weights"), form.fields, form.files.get("spec_sample"),
                              owner=owner, admin=admin, replace=replace)
        return idempotency.Created(200 if replace else 201, teacher_out(row), f"/v1/teachers/{row.id}")

    try:
        return await idempotency.run(request, svc, owner, idempotency.fingerprint(request, form.digest()), create)
    finally:
        form.cleanup()


@router.post("", status_code=201, response_model=TeacherOut, openapi_extra={**UPLOAD_BODY, **idempotency.DOC},
             responses=problems(409, 413, 415, 422), summary="Add a teacher (validated against its architecture)")
async def add_teacher(request: Request, owner: Owner, svc: ServicesDep) -> JSONResponse:
    return await _upload(request, owner, svc)


@router.put("/{teacher_id}", status_code=200, response_model=TeacherOut, openapi_extra=UPLOAD_BODY,
            responses=problems(403, 404, 413, 415, 422),
            summary="Replace a teacher (its owner, or an admin key for any)")
async def replace_teacher(teacher_id: str, request: Request, owner: Owner, svc: ServicesDep) -> JSONResponse:
    return await _upload(request, owner, svc, replace=teacher_id)


@router.delete("/{teacher_id}", status_code=204, responses=problems(403, 404),
               summary="Delete a teacher (its owner, or an admin key for any)")
def delete_teacher(teacher_id: str, owner: Owner, svc: ServicesDep) -> Response:
    ops.delete_teacher(svc, teacher_id, owner, is_admin(svc.settings, owner))
    return Response(status_code=204)
