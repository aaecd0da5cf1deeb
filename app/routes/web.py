"""The web page (a static single page at ``/``, its files under ``/static``) and ``/v1/info``, which the page
reads before anything else."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app import services as ops
from app.routes import ServicesDep
from app.schemas import Info

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    # Revalidated on every load, so a new version of the page is never mixed with an old script.
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/v1/info", response_model=Info, tags=["health"], summary="Version, auth and limits (public)")
def info(svc: ServicesDep) -> Info:
    return Info(**ops.info(svc))
