"""HTTP routes: parse the request, call app.services, shape the response. Nothing else."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.problems import PROBLEM_JSON, Problem
from service.container import Services

# Bound on integer query parameters: anything larger is an error of the client's, not an overflow in the database.
MAX_INT = 2**31 - 1

PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def problems(*codes: int) -> dict:
    descriptions = {400: "Bad request", 401: "Missing or invalid API key", 403: "Only an admin key may do this",
                    404: "Not found", 409: "Conflict (or a request with the same Idempotency-Key still running)",
                    410: "Gone", 413: "Upload, dataset or JSON body too large", 415: "Unsupported media type",
                    422: "Invalid request: also every malformed body (invalid JSON or UTF-8, nested too deep) and "
                         "an Idempotency-Key reused with another body",
                    429: "Too many jobs for this key (see Retry-After)",
                    503: "A dependency (database, queue) is unavailable; try again"}
    return {c: {"description": descriptions.get(c, "Error"), **PROBLEM} for c in codes}


def body_of(model) -> dict:
    """A JSON body as the client set it (fields left out stay out: some mean 'the server default')."""
    return model.model_dump(mode="json", exclude_unset=True)


def services(request: Request) -> Services:
    return request.app.state.services


#: What a route declares to get the process's services: ``svc: ServicesDep``.
ServicesDep = Annotated[Services, Depends(services)]


def require_json(request: Request) -> None:
    """JSON bodies only: anything else is a 415, not a confusing validation error."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise Problem(415, f"expected an application/json body, got {ctype or 'no content type'}",
                      type_="unsupported-media-type", title="Unsupported media type")


def teachers_ready(request: Request) -> None:
    """503 with Retry-After while the demo teacher repository is still being built (first start) or after its
    build failed."""
    from service import zoo_build

    p = zoo_build.progress(request.app.state.settings)
    if p is None or p.state == "ready":
        return
    if p.state == "failed":
        raise Problem(503, f"building the demo teacher repository failed ({p.error}); see the server log",
                      type_="repository-build-failed", title="No teachers", build=p.to_dict())
    raise Problem(503, f"the demo teacher repository is still being built ({p.built}/{p.total or '?'} teachers); "
                       "try again shortly (GET /healthz shows the progress)",
                  type_="repository-building", title="Teachers not ready yet",
                  headers={"Retry-After": str(p.retry_after_s())}, build=p.to_dict())
