"""RFC 9457 problem details for every error the API returns, framework errors included."""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("hubscout.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://hubscout.dev/problems/"


class Problem(Exception):
    """An error answered as problem+json. ``type_`` is a short slug, expanded to a URI under TYPE_BASE."""

    def __init__(self, status: int, detail: str, *, type_: str | None = None, title: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.title = title
        self.headers = headers
        self.extensions = extensions


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, f"{what} {ident!r} does not exist", type_="not-found", title=f"{what.capitalize()} not found")


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
    except ValueError:
        return "error"


def problem_response(request: Request, status: int, detail: str, *, type_: str | None = None,
                     title: str | None = None, headers: dict[str, str] | None = None,
                     **extensions: Any) -> JSONResponse:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {
        "type": TYPE_BASE + (type_ or _slug(status)),
        "title": title or phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **jsonable_encoder(extensions),
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error") or e.get("msg")
            parts.append(f"malformed JSON body: {reason}")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def allowed_methods(request: Request, given: str = "") -> list[str]:
    """Every method some route answers at this path. Starlette names only the first matching route's, so the
    path templates of the OpenAPI document (one entry per path, all its methods) are matched instead."""
    import re

    table = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, ops in request.app.openapi().get("paths", {}).items():
            parts = re.split(r"(\{[^}]+\})", template)  # literal, {param}, literal, ...
            pattern = re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)))
            methods = {m.upper() for m in ops if m.lower() in ("get", "put", "post", "delete", "patch", "options")}
            table.append((pattern, methods | ({"HEAD"} if "GET" in methods else set())))
        request.app.state.allowed_methods = table
    methods = {m.strip() for m in given.split(",") if m.strip()}
    for pattern, ms in table:
        if pattern.fullmatch(request.url.path):
            methods |= ms
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, type_=exc.type_, title=exc.title,
                                headers=exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = list(exc.errors())
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in raw]
        return problem_response(request, 422, _validation_detail(raw), type_="validation-error",
                                title="Invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            given = (headers or {}).get("Allow", "")
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request, given))}
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            # FastAPI's answer to a body its JSON parser chokes on (app.bodies catches the known ones first):
            # malformed bodies are one status, the documented 422.
            return problem_response(request, 422, "malformed JSON body", type_="validation-error",
                                    title="Invalid request")
        return problem_response(request, exc.status_code, detail, headers=headers)

    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # Connection refused or dropped (the database restarting), or no pooled connection free in time.
        log.error("database unavailable on %s %s: %s", request.method, request.url.path,
                  getattr(exc, "orig", None) or exc)
        return problem_response(request, 503, "the database is unavailable; try again later",
                                type_="database-unavailable", title="Service unavailable",
                                headers={"Retry-After": "5"})

    for exc_type in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(exc_type, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "an internal error occurred; it has been logged",
                                type_="internal-error")
