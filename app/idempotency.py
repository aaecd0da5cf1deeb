"""``Idempotency-Key`` on the POSTs that create something: the same key and body get the first answer again (its
status and body, so the same id) for ``idempotency_ttl_seconds``; the same key with another body is a 422.

Keys are scoped per API key (owner) and kept in the database, so every API process agrees. The first request
claims its key by inserting a row without an answer; the unique constraint on (owner, key) makes one of two
racing requests the owner of the work, the other sees it running (409) or finished (the replay). A request that
fails releases its key: nothing was created, so a retry may run.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from app.problems import Problem
from service.db import utcnow
from service.tables import IdempotencyRow

HEADER = "Idempotency-Key"
DOC = {"parameters": [{
    "name": HEADER, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
    "description": "Send the same key again (a retry) and get the first answer, with the same id, for 24 h; the "
                   "same key with another body is a 422. Scoped to your API key."}]}


@dataclass
class Created:
    """What a creating operation answers: status, JSON body and Location."""

    status: int
    body: Any
    location: str


def fingerprint(request: Request, *parts: Any) -> str:
    """What 'the same body' means: the route and the request's parsed content (a multipart body differs in its
    boundary alone between two identical uploads, so files count by their hash)."""
    blob = json.dumps([request.method, request.url.path, *jsonable_encoder(parts)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Problem(422, f"{HEADER} must be 1 to 255 printable ASCII characters", type_="validation-error",
                      title="Invalid request")
    return key


def _response(c: Created, replayed: bool = False) -> JSONResponse:
    headers = {"Location": c.location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(jsonable_encoder(c.body), status_code=c.status, headers=headers)


def _claim(svc, owner: str, key: str, fp: str) -> Created | None:
    """None: this request owns the key and must do the work. Else the first answer to replay."""
    cutoff = utcnow() - dt.timedelta(seconds=svc.settings.idempotency_ttl_seconds)
    for _ in range(3):
        with svc.db.session() as s:
            s.execute(delete(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.created_at < cutoff))
            row = s.scalar(select(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == key))
            if row is None:
                s.add(IdempotencyRow(owner=owner, key=key, fingerprint=fp))
                try:
                    s.commit()
                    return None
                except IntegrityError:  # another request claimed it a moment ago
                    s.rollback()
                    continue
            s.commit()
        if row.fingerprint != fp:
            raise Problem(422, f"this {HEADER} was used with another request; use a new key for a new request",
                          type_="idempotency-key-reused", title="Invalid request")
        if row.status_code is None:
            raise Problem(409, f"a request with this {HEADER} is still running; retry once it has answered",
                          type_="idempotency-key-in-use", title="Conflict", headers={"Retry-After": "1"})
        return Created(row.status_code, row.response, row.location or "")
    raise Problem(409, f"a request with this {HEADER} is still running", type_="idempotency-key-in-use",
                  title="Conflict", headers={"Retry-After": "1"})


def _finish(svc, owner: str, key: str, c: Created | None) -> None:
    with svc.db.session() as s:
        row = s.scalar(select(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == key))
        if row is not None:
            if c is None:
                s.delete(row)
            else:
                row.status_code, row.response, row.location = c.status, jsonable_encoder(c.body), c.location
        s.commit()


async def run(request: Request, svc, owner: str, fp: str, create: Callable[[], Created]) -> JSONResponse:
    """``create()`` (blocking: run in a worker thread) once per key; without the header, every time."""
    key = _key(request)
    if key is None:
        return _response(await run_in_threadpool(create))
    first = await run_in_threadpool(_claim, svc, owner, key, fp)
    if first is not None:
        return _response(first, replayed=True)
    try:
        c = await run_in_threadpool(create)
    except BaseException:
        await run_in_threadpool(_finish, svc, owner, key, None)
        raise
    await run_in_threadpool(_finish, svc, owner, key, c)
    return _response(c)
