"""API keys, owners and per-key limits, in-process (TestClient, SQLite, no worker): who may call what, and a key
never sees (nor learns of) another key's datasets, jobs, rankings or students."""
from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from svc_helpers import ROOT, assert_problem, base_env, free_port, make_tiny_repo, npz_bytes, toy_dataset

from app.main import create_app
from service.settings import ConfigError, Settings
from service.tables import DatasetRow, JobRow, RankingRow, StudentRow, result_id_for

KEY_A = "key-a-0123456789abcdef0123456789"
KEY_B = "key-b-fedcba9876543210fedcba9876"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"X-API-Key": KEY_B}
# Reachable without a key: health for probes, the API's documentation, and the web page with its assets and the
# public facts it needs before it has a key (/v1/info: whether keys are required, limits).
OPEN_PATHS = {"/healthz", "/v1/info", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    tmp = tmp_path_factory.mktemp("auth")
    make_tiny_repo(tmp / "zoo")
    return Settings(data_dir=tmp / "data", repository_dir=tmp / "zoo", build_demo_zoo=False,
                    api_keys=[KEY_A, KEY_B], max_active_jobs_per_key=3)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.services = c.app.state.services
        yield c


def rows(client, model, *where):
    with client.services.db.session() as s:
        return list(s.scalars(select(model).where(*where)))


# ------------------------------------------------------------------------------------------------- keys

def test_settings_read_keys_comma_separated(monkeypatch):
    monkeypatch.setenv("HUBSCOUT_API_KEYS", f" {KEY_A}, {KEY_B} ,")
    assert Settings().api_keys == [KEY_A, KEY_B]
    monkeypatch.setenv("HUBSCOUT_API_KEYS", "")
    assert Settings().api_keys == []


def test_every_route_but_health_docs_and_page_needs_a_key(client):
    spec = client.get("/openapi.json").json()
    checked = 0
    for path, ops in spec["paths"].items():
        if path in OPEN_PATHS or path.startswith("/static"):
            continue
        url = path.replace("{", "").replace("}", "")  # any id will do: the key is checked first
        for method in ops:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                            {"Authorization": f"Basic {KEY_A}"}):
                r = client.request(method.upper(), url, headers=headers)
                body = assert_problem(r, 401)
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, url)
                assert body["detail"] == "invalid API key" or "API key is required" in body["detail"], body
            checked += 1
    assert checked >= 12, f"only {checked} protected operations found"
    for path in ("/healthz", "/openapi.json", "/docs", "/redoc", "/", "/v1/info"):
        assert client.get(path).status_code == 200, path
    assert client.get("/v1/info").json()["auth_required"] is True


def test_both_headers_are_accepted(client):
    assert client.get("/v1/teachers", headers=A).status_code == 200
    assert client.get("/v1/teachers", headers=B).status_code == 200
    assert client.get("/v1/teachers", headers={"X-API-Key": KEY_A}).status_code == 200


def test_openapi_declares_the_keys(client):
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                       "description": schemes["APIKeyHeader"]["description"]}
    op = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert {"HTTPBearer": []} in op["security"] and {"APIKeyHeader": []} in op["security"]
    assert "401" in op["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ------------------------------------------------------------------------------------------------- owners

def _fake_results(client, job_id: str, settings: Settings) -> None:
    """What a worker would write for a finished job: a ranking and a student with its archive in storage."""
    rid = result_id_for(job_id)
    key = f"students/{rid}.zip"
    path = client.services.storage.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with client.services.db.session() as s:
        job = s.get(JobRow, job_id)
        s.add(RankingRow(id=rid, job_id=job_id, dataset_id=job.dataset_id, result={
            "dataset_sha256": "0" * 64, "metrics": ["ot"], "primary": "ot", "directions": {"ot": "lower"},
            "n_samples": 12, "classes": ["ant", "bee", "cow"], "elapsed_s": 0.1, "teachers": []}))
        s.add(StudentRow(id=rid, job_id=job_id, dataset_id=job.dataset_id, teacher_ids=["tiny-0"],
                         student_arch="test_resnet", config={}, metrics={}, archive_key=key,
                         archive_bytes=path.stat().st_size, archive_sha256=digest))
        s.commit()


def test_a_key_sees_only_its_own(client, settings):
    data = npz_bytes(toy_dataset(seed=3))
    mine = client.post("/v1/datasets", files={"file": ("d.npz", data)}, headers=A)
    assert mine.status_code == 201, mine.text
    ds = mine.json()["id"]
    # The same content from the other key is its own new dataset: a 200 with A's id would tell B it exists.
    theirs = client.post("/v1/datasets", files={"file": ("d.npz", data)}, headers=B)
    assert theirs.status_code == 201 and theirs.json()["id"] != ds
    assert client.post("/v1/datasets", files={"file": ("d.npz", data)}, headers=A).json()["id"] == ds

    job = client.post("/v1/rankings", json={"dataset_id": ds}, headers=A)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    _fake_results(client, job_id, settings)

    # The owner sees everything...
    assert client.get(f"/v1/datasets/{ds}", headers=A).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
    assert client.get(f"/v1/rankings/{job_id}", headers=A).status_code == 200
    assert client.get(f"/v1/students/{job_id}", headers=A).status_code == 200
    assert client.get(f"/v1/students/{job_id}/download", headers=A).status_code == 200
    assert job_id in [j["id"] for j in client.get("/v1/jobs", headers=A).json()["items"]]
    # ...the other key gets the very answer an id that never existed gets.
    for url in (f"/v1/datasets/{ds}", f"/v1/jobs/{job_id}", f"/v1/rankings/{job_id}", f"/v1/students/{job_id}",
                f"/v1/students/{job_id}/download"):
        body = assert_problem(client.get(url, headers=B), 404)
        never = assert_problem(client.get(url.replace(ds, "ds_nope").replace(job_id, "job_nope"), headers=B), 404)
        assert body["title"] == never["title"] and body["type"] == never["type"]
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=B), 404)
    assert client.get(f"/v1/jobs/{job_id}", headers=A).json()["status"] == "queued"  # the cancel did nothing
    listed = client.get("/v1/jobs", headers=B).json()
    assert job_id not in [j["id"] for j in listed["items"]] and listed["total"] == 0
    for path, body in (("/v1/rankings", {"dataset_id": ds}),
                       ("/v1/distillations", {"dataset_id": ds, "teacher_ids": ["tiny-0"]})):
        assert "does not exist" in assert_problem(client.post(path, json=body, headers=B), 422)["detail"]
    # Teachers are one shared catalogue.
    assert client.get("/v1/teachers", headers=B).json() == client.get("/v1/teachers", headers=A).json()

    # What is stored is the key's hash, never the key.
    owner_a = hashlib.sha256(KEY_A.encode()).hexdigest()
    assert [r.owner for r in rows(client, DatasetRow, DatasetRow.id == ds)] == [owner_a]
    assert [r.owner for r in rows(client, JobRow, JobRow.id == job_id)] == [owner_a]
    db_file = Path(settings.data_dir) / "hubscout.db"
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob("hubscout.db*"))
    assert KEY_A.encode() not in raw and KEY_B.encode() not in raw


def test_jobs_per_key_are_limited(client):
    ds = {k: client.post("/v1/datasets", files={"file": ("l.npz", npz_bytes(toy_dataset(seed=11)))},
                         headers=h).json()["id"] for k, h in (("a", A), ("b", B))}
    active = client.get("/v1/jobs", params={"status": "queued"}, headers=A).json()["total"]
    made = []
    for _ in range(3 - active):
        r = client.post("/v1/rankings", json={"dataset_id": ds["a"]}, headers=A)
        assert r.status_code == 202, r.text
        made.append(r.json()["id"])
    jobs_before = len(rows(client, JobRow))
    r = client.post("/v1/distillations", json={"dataset_id": ds["a"], "teacher_ids": ["tiny-0"]}, headers=A)
    body = assert_problem(r, 429)
    assert int(r.headers["retry-after"]) > 0 and body["limit"] == 3
    assert_problem(client.post("/v1/rankings", json={"dataset_id": ds["a"]}, headers=A), 429)
    assert len(rows(client, JobRow)) == jobs_before, "a refused job was stored"
    # Another key has its own allowance; a finished (here: cancelled) job frees a slot.
    assert client.post("/v1/rankings", json={"dataset_id": ds["b"]}, headers=B).status_code == 202
    assert client.delete(f"/v1/jobs/{made[-1]}", headers=A).json()["status"] == "cancelled"
    assert client.post("/v1/rankings", json={"dataset_id": ds["a"]}, headers=A).status_code == 202


# ------------------------------------------------------------------------------------------------- exposure

def test_no_keys_is_refused_off_the_embedded_loopback_default(tmp_path):
    distributed = Settings(data_dir=tmp_path, build_demo_zoo=False, celery_broker_url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="HUBSCOUT_API_KEYS"):
        distributed.check_exposure()
    with pytest.raises(ConfigError, match="HUBSCOUT_API_KEYS"):  # the app refuses to start, not just `serve`
        with TestClient(create_app(distributed)):
            pass
    embedded = Settings(data_dir=tmp_path, build_demo_zoo=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        embedded.check_exposure(host)
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(ConfigError, match="refusing to serve without API keys"):
            embedded.check_exposure(host)
    Settings(data_dir=tmp_path, api_keys=[KEY_A]).check_exposure("0.0.0.0")
    Settings(data_dir=tmp_path, api_keys=[KEY_A], celery_broker_url="redis://h:6379/0").check_exposure("0.0.0.0")


def test_hubscout_serve_refuses_a_public_bind_without_keys(tmp_path):
    env = base_env(HUBSCOUT_DATA_DIR=str(tmp_path / "var"), HUBSCOUT_BUILD_DEMO_ZOO="false")
    done = subprocess.run([sys.executable, "-m", "hubscout.cli", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "refusing to serve without API keys on 0.0.0.0" in done.stderr
    assert not (tmp_path / "var" / "hubscout.db").exists(), "it prepared the service before refusing"


def test_keys_off_answers_only_requests_that_came_over_loopback(tmp_path):
    """A bare `uvicorn --host 0.0.0.0` of the embedded default: the check falls to the address the request came
    in on (simulated in-process; no packet leaves)."""
    app = create_app(Settings(data_dir=tmp_path, build_demo_zoo=False))

    async def get(server: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{server}:8000") as c:
            return await c.get("/v1/jobs")

    body = assert_problem(asyncio.run(get("192.0.2.10")), 401)
    assert "loopback" in body["detail"]
