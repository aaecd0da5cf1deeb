"""The FastAPI application and ``serve``, the whole service in one call (what ``hubscout serve`` runs)."""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app import problems
from app.local_worker import LocalWorker
from service import teacher_sync
from service.container import Services
from service.db import Database, migrate
from service.settings import ConfigError, Settings, get_settings

log = logging.getLogger("hubscout")

_prepared: set[str] = set()  # data dirs `serve` already prepared in this process
_serving = threading.Event()  # set once the app has started: a first-start build waits for it (service.zoo_build)


def configure_logging(settings: Settings) -> None:
    """Our loggers to stderr at the configured level (uvicorn sets up only its own); a no-op if the root logger
    is already configured."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hubscout").setLevel(settings.log_level.upper())
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def prepare(settings: Settings) -> None:
    """Everything before the first request: folders, schema, teacher repository and its table mirror. A missing
    demo repository is built in the background (``service.zoo_build``): the API answers meanwhile."""
    from hubscout.teachers import Repository  # torch: loaded when the service starts, not on import
    from service import specs, zoo_build

    def mirror(root) -> None:
        db = Database(settings)
        try:
            teacher_sync.sync(db, Repository(root))
        finally:
            db.dispose()

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    _clean_scratch(settings)
    db = Database(settings)
    try:
        if settings.auto_migrate:
            migrate(settings, db.engine)
        root = teacher_sync.ensure_repository(settings, background=True, after=mirror, wait_for=_serving,
                                              then=lambda root: specs.compute_local(settings, root))
        if not zoo_build.is_building(settings):
            teacher_sync.sync(db, Repository(root))
    finally:
        db.dispose()


def _clean_scratch(settings: Settings, max_age_s: float = 24 * 3600) -> None:
    """Uploads interrupted by a crash leave scratch files; a day later nothing can still be writing them."""
    import time

    scratch = settings.storage_root / "tmp"
    if not scratch.is_dir():
        return
    cutoff = time.time() - max_age_s
    for p in scratch.iterdir():
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass


def build_services(settings: Settings) -> Services:
    return Services.from_settings(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing touches disk, database or broker until it starts (lifespan)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings)
        check_access(settings)
        if str(settings.data_dir.resolve()) not in _prepared:
            await run_in_threadpool(prepare, settings)
        svc = build_services(settings)
        app.state.services = svc
        log.info("hubscout API ready (%s mode; database %s; storage %s; repository %s; %s)",
                 "embedded" if settings.embedded else "distributed",
                 svc.db.engine.url.render_as_string(hide_password=True), settings.storage_root,
                 settings.repository_dir,
                 f"{len(settings.all_keys)} API key(s)" if settings.auth_enabled else "no API keys (loopback only)")
        _serving.set()
        try:
            yield
        finally:
            svc.close()

    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline

    from app.routes import datasets, health, jobs, teachers, web

    # /docs and /redoc with Swagger UI and ReDoc from the installed package (under /static-offline-docs), not a
    # CDN: they load on a machine without internet.
    app = FastAPIOffline(
        title="hubscout",
        version=_version(),
        summary="Rank a model hub's teachers for your labelled task, and distil a student.",
        description="Upload a dataset, rank the repository's teachers by OT relatedness (and baselines), "
                    "distil a student and download it. Long work runs as jobs: POST returns 202 and a job to "
                    "poll. Errors are RFC 9457 problem details (application/problem+json).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    from app.bodies import BodyLimit

    app.add_middleware(BodyLimit, settings=settings)
    for router in (datasets.router, datasets.demo_router, teachers.router, jobs.router, health.router, web.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=web.WEB_DIR), name="static")
    _add_problem_schema(app)
    return app


def check_access(settings: Settings, host: str | None = None) -> None:
    """Refuse to start when the service would answer other machines without API keys (see Settings)."""
    try:
        settings.check_exposure(host)
    except ConfigError as e:
        log.error("%s", e)
        raise
    short = [k for k in settings.all_keys if len(k) < 16]
    if short:
        log.warning("%d API key(s) shorter than 16 characters: use long random keys (e.g. `openssl rand -hex 32`)",
                    len(short))


def _version() -> str:
    try:
        import hubscout

        return hubscout.__version__
    except Exception:
        return "0"


def _add_problem_schema(app: FastAPI) -> None:
    """Declare the Problem schema that the routes' error responses reference."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
            "type": "object", "title": "Problem", "description": "RFC 9457 problem details",
            "required": ["type", "title", "status"],
            "properties": {"type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"},
                           "instance": {"type": "string"}},
            "additionalProperties": True,
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(host: str = "127.0.0.1", port: int = 8000, reload: bool = False) -> None:
    """Run the service: migrations, teacher repository (built on first start if missing), a local Celery worker
    in the embedded default, and uvicorn. Returns when uvicorn stops; the local worker is stopped with it."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings)
    try:
        check_access(settings, host)
    except ConfigError as e:
        raise SystemExit(f"hubscout serve: {e}") from None
    prepare(settings)
    _prepared.add(str(settings.data_dir.resolve()))
    worker = LocalWorker(settings) if settings.start_local_worker else None
    if worker is not None:
        worker.start()
    elif settings.embedded:
        log.warning("no broker configured and the local worker is off: jobs will wait for a worker "
                    "on the filesystem broker at %s", settings.broker_dir)
    try:
        uvicorn.run("app.main:app", host=host, port=port, reload=reload, log_level=settings.log_level.lower())
    finally:
        if worker is not None:
            worker.stop()


app = create_app()
