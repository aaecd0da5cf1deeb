from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.problems import problem_response
from app.routes import ServicesDep, problems
from app.schemas import Health
from service.container import Services

router = APIRouter(tags=["health"])
log = logging.getLogger("hubscout.health")


def _checks(svc: Services) -> dict[str, str]:
    out = {}
    for name, fn in (("database", svc.db.check), ("broker", svc.queue.check), ("storage", svc.storage.check)):
        try:
            fn()
            out[name] = "ok"
        except Exception as e:
            log.warning("health check %s failed: %s", name, e)
            out[name] = f"failed: {type(e).__name__}: {e}"[:300]
    return out


@router.get("/healthz", response_model=Health, responses=problems(503))
async def healthz(request: Request, svc: ServicesDep):
    checks = await run_in_threadpool(_checks, svc)
    failed = [k for k, v in checks.items() if v != "ok"]
    if failed:
        return problem_response(request, 503, f"unhealthy: {', '.join(failed)}", type_="unhealthy",
                                title="Service unavailable", checks=checks, failed=failed)
    return JSONResponse(Health(status="ok", checks=checks,
                               mode="embedded" if svc.settings.embedded else "distributed").model_dump())
