from __future__ import annotations

from pathlib import PurePath

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app import idempotency
from app import services as ops
from app.auth import Owner, authenticate
from app.problems import Problem
from app.routes import ServicesDep, body_of, problems, require_json
from app.schemas import DatasetOut, DemoDatasetCreate, DemoTargetOut
from app.uploads import read_multipart
from service.tables import DatasetRow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(authenticate)],
                   responses=problems(401, 503))
demo_router = APIRouter(tags=["datasets"], dependencies=[Depends(authenticate)], responses=problems(401))

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "An ImageFolder .zip (<class>/<image>) or an .npz (images, labels, classes)."},
        "name": {"type": "string", "description": "Display name; default: the file's name."},
    }}}}}}


def dataset_out(row: DatasetRow) -> DatasetOut:
    return DatasetOut.model_validate(row, from_attributes=True)


def _stored(row: DatasetRow, created: bool) -> idempotency.Created:
    return idempotency.Created(201 if created else 200, dataset_out(row), f"/v1/datasets/{row.id}")


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra={**UPLOAD_BODY, **idempotency.DOC},
             responses={200: {"description": "The same content was uploaded before: the existing dataset",
                              "model": DatasetOut}, **problems(413, 415, 422)},
             summary="Upload a labelled dataset")
async def upload_dataset(request: Request, owner: Owner, svc: ServicesDep) -> JSONResponse:
    s = svc.settings
    form = await read_multipart(request, svc.storage, file_limits={"file": s.max_upload_bytes},
                                text_fields={"name"}, max_field_bytes=s.max_form_field_bytes,
                                chunk_bytes=s.upload_chunk_bytes)
    try:
        upload = form.files.get("file")
        if upload is None:
            raise Problem(422, "no file part named 'file'", type_="validation-error", title="Invalid request")
        name = form.fields.get("name") or PurePath(upload.filename.replace("\\", "/")).stem
        return await idempotency.run(request, svc, owner, idempotency.fingerprint(request, form.digest()),
                                     lambda: _stored(*ops.ingest_dataset(svc, upload, name, owner)))
    finally:
        form.cleanup()


@demo_router.get("/v1/demo-targets", response_model=list[DemoTargetOut], summary="The built-in demo targets")
def list_demo_targets() -> list[DemoTargetOut]:
    return [DemoTargetOut(**t) for t in ops.demo_targets()]


@router.post("/demo", status_code=201, response_model=DatasetOut, dependencies=[Depends(require_json)],
             openapi_extra=idempotency.DOC,
             responses={200: {"description": "The same content exists: the existing dataset", "model": DatasetOut},
                        **problems(413, 415, 422, 503)},
             summary="Create a dataset from a built-in demo target")
async def create_demo_dataset(body: DemoDatasetCreate, request: Request, owner: Owner,
                              svc: ServicesDep) -> JSONResponse:
    return await idempotency.run(request, svc, owner, idempotency.fingerprint(request, body_of(body)),
                                 lambda: _stored(*ops.create_demo_dataset(svc, body, owner)))


@router.get("/{dataset_id}", response_model=DatasetOut, responses=problems(404))
def get_dataset(dataset_id: str, owner: Owner, svc: ServicesDep) -> DatasetOut:
    return dataset_out(ops.get_dataset(svc, dataset_id, owner))
