"""docker-compose.yml and the Dockerfile agree with service.settings and with each other."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + name).upper())
        else:
            choices = getattr(alias, "choices", [alias])
            names.update(c.upper() for c in choices if isinstance(c, str))
    return names


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def test_services_present(compose):
    assert {"api", "worker", "postgres", "redis"} <= set(compose["services"])


def test_every_variable_is_a_setting(compose):
    known = settings_env_names()
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "HUBSCOUT_DATA_DIR", "HUBSCOUT_REPOSITORY_DIR"} <= known
    for name in ("api", "worker"):
        unknown = set(env_of(compose["services"][name])) - known
        assert not unknown, f"{name} sets variables Settings does not read: {unknown}"


def test_api_and_worker_share_configuration_image_and_storage(compose):
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert env_of(api) == env_of(worker)
    assert api.get("image") and api["image"] == worker.get("image")
    assert "build" in api
    mounts = {}
    for name, svc in (("api", api), ("worker", worker)):
        mounts[name] = {m.split(":")[0]: m.split(":")[1] for m in svc["volumes"]}
    shared = {v: p for v, p in mounts["api"].items() if mounts["worker"].get(v) == p and v in compose["volumes"]}
    assert shared, "api and worker share no named volume at the same path"
    env = env_of(api)
    for var in ("HUBSCOUT_DATA_DIR", "HUBSCOUT_STORAGE_DIR", "HUBSCOUT_REPOSITORY_DIR"):
        path = env.get(var, env["HUBSCOUT_DATA_DIR"])
        assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in shared.values()), \
            f"{var}={path} is not on the shared volume"


def test_urls_point_at_the_compose_services(compose):
    env = env_of(compose["services"]["api"])
    db, broker = urlparse(env["DATABASE_URL"]), urlparse(env["CELERY_BROKER_URL"])
    assert db.scheme.startswith("postgresql") and db.hostname in compose["services"]
    assert broker.scheme == "redis" and broker.hostname in compose["services"]
    pg = compose["services"]["postgres"]["environment"]
    assert (db.username, db.password, db.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
                                                              pg["POSTGRES_DB"])
    s = Settings(**{k: v for k, v in {
        "database_url": env["DATABASE_URL"], "celery_broker_url": env["CELERY_BROKER_URL"],
        "data_dir": env["HUBSCOUT_DATA_DIR"]}.items()})
    assert s.sqlalchemy_url.startswith("postgresql+psycopg://")
    assert not s.embedded and not s.start_local_worker


def test_commands(compose):
    api, worker = command_of(compose["services"]["api"]), command_of(compose["services"]["worker"])
    assert worker[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert api[:2] == ["hubscout", "serve"] and "0.0.0.0" in api
    port = api[api.index("--port") + 1]
    assert any(str(p).split(":")[-1] == port for p in compose["services"]["api"]["ports"])
    depends = compose["services"]["worker"]["depends_on"]
    assert "api" in depends or {"postgres", "redis"} <= set(depends)
    # The image's HEALTHCHECK probes the API's port, which a worker does not open.
    probe = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "celery -A worker.celery_app inspect ping" in probe


def test_dockerfile_matches(compose):
    text = (ROOT / "Dockerfile").read_text()
    for path in ("hubscout", "app", "worker", "migrations", "alembic.ini", "pyproject.toml", "benchmarks/zoo-v2"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.M), f"Dockerfile does not copy {path}"
    api_port = command_of(compose["services"]["api"])[-1]
    assert re.search(rf"^EXPOSE {api_port}\b", text, re.M)
    for var in re.findall(r"^ENV (.+?)(?<!\\)$", text, re.M | re.S):
        for name in re.findall(r"\b([A-Z_]+)=", var):
            if name.startswith("HUBSCOUT_"):
                assert name in settings_env_names(), name
