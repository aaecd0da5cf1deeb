"""First start on a fresh checkout: `serve` answers at once while it builds the (quick) demo repository in the
background, says how far the build is, refuses what needs teachers with 503 + Retry-After, then ranks."""
from __future__ import annotations

import sys
import time

import httpx

from svc_helpers import PROBLEM_JSON, Proc, base_env, free_port, npz_bytes, wait_job


def test_serve_answers_while_the_demo_repository_builds(tmp_path, footwear_target):
    zoo = tmp_path / "zoo"
    env = base_env(HUBSCOUT_DATA_DIR=str(tmp_path / "var"), HUBSCOUT_REPOSITORY_DIR=str(zoo),
                   HUBSCOUT_DEMO_ZOO_QUICK="1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = Proc("first-start", [sys.executable, "-c", f"from app.main import serve; serve('127.0.0.1', {port})"],
                env, tmp_path)
    try:
        health = None
        while time.monotonic() - t0 < 60:
            assert proc.alive(), proc.log()[-3000:]
            try:
                health = httpx.get(f"{base}/healthz", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health is not None and health.status_code == 200, proc.log()[-3000:]
        print(f"/healthz answered {time.monotonic() - t0:.1f} s after start")
        body = health.json()
        assert body["status"] == "building" and body["repository"]["state"] == "building"
        assert not zoo.exists()  # answered before the repository was there

        with httpx.Client(base_url=base, timeout=30) as c:
            info = c.get("/v1/info").json()["repository"]
            assert info["state"] == "building" and 0 <= info["built"] <= max(info["total"], 0) + 1
            ds = c.post("/v1/datasets", files={"file": ("t.npz", npz_bytes(footwear_target))})
            assert ds.status_code == 201, ds.text  # uploads need no teachers
            for path, payload in (("/v1/rankings", {"dataset_id": ds.json()["id"]}),
                                  ("/v1/distillations", {"dataset_id": ds.json()["id"],
                                                         "teacher_ids": ["fashion-footwear"]})):
                r = c.post(path, json=payload)
                assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM_JSON), r.text
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["type"].endswith("repository-building") and "being built" in r.json()["detail"]
            assert c.get("/v1/teachers").status_code == 503

            # The page shows the build and waits for it (the HTML carries the progress box).
            assert 'id="build-progress"' in c.get("/").text

            seen = set()
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                h = c.get("/healthz").json()
                seen.add((h["repository"].get("built"), h["repository"].get("total")))
                if h["status"] == "ok":
                    break
                assert h["repository"]["state"] == "building", h
                time.sleep(0.5)
            assert h["status"] == "ok" and h["repository"]["state"] == "ready", h
            built_lines = [ln for ln in proc.log().splitlines() if "demo zoo: built teacher" in ln]
            assert len(built_lines) == 5, proc.log()[-3000:]  # quick zoo: lite0 + four small teachers
            assert any(b and 0 < b < t for b, t in seen if t) or len(seen) > 1  # progress moved while we watched

            assert {t["id"] for t in c.get("/v1/teachers").json()["items"]} >= {"fashion-footwear",
                                                                               "imagenet-efficientnet-lite0"}
            job = c.post("/v1/rankings", json={"dataset_id": ds.json()["id"], "metrics": ["ot"]})
            assert job.status_code == 202, job.text
            done = wait_job(c, job.json()["id"], timeout=300)
            assert done["status"] == "succeeded", done
            ranking = c.get(done["links"]["result"]).json()
            assert ranking["teachers"][0]["teacher_id"] == "fashion-footwear"
        print(f"first ranking answered {time.monotonic() - t0:.1f} s after start")
    finally:
        proc.stop()


def test_a_failed_build_is_reported_and_the_api_stays_up(tmp_path, monkeypatch):
    import hubscout.zoo
    from fastapi.testclient import TestClient

    from app.main import create_app
    from service.settings import Settings

    def broken(out, quick=False, on_teacher=None, **kw):
        on_teacher("first", 1, 3, 0.1)
        raise OSError("disk full")

    monkeypatch.setattr(hubscout.zoo, "build_demo_zoo", broken)
    s = Settings(data_dir=tmp_path / "var", repository_dir=tmp_path / "zoo", demo_zoo_quick=True)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/info").json()["repository"]["state"] == "building" and time.monotonic() < deadline:
            time.sleep(0.05)
        repo = c.get("/v1/info").json()["repository"]
        assert repo["state"] == "failed" and "disk full" in repo["error"] and repo["built"] == 1
        h = c.get("/healthz")
        assert h.status_code == 503 and "repository" in h.json()["failed"]
        r = c.post("/v1/rankings", json={"dataset_id": "ds_x"})
        assert r.status_code == 503 and r.json()["type"].endswith("repository-build-failed")
        assert "disk full" in r.json()["detail"]
    assert not (tmp_path / "zoo").exists() and not list(tmp_path.glob(".zoo.building-*"))


def test_the_repository_is_ready_before_its_specifications(tmp_path, monkeypatch):
    """First start: rankings are accepted as soon as the teachers are in place; the specifications come after, in
    the build thread at a lower priority, held from the workers' sweep meanwhile (it would queue them ahead of
    the first ranking), and each is stored in its row and folder once done."""
    import os
    import threading

    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    import hubscout.spec._files as spec_files
    import hubscout.zoo
    from app.main import create_app
    from hubscout.spec import SPEC_FILE, TeacherView, build_specification
    from hubscout.teachers import InputConfig, Repository, build_model
    from service import specs
    from service.db import Database
    from service.settings import Settings

    from svc_helpers import toy_dataset

    def build(out, quick=False, on_teacher=None, **kw):
        repo = Repository(out)
        for i in range(2):
            torch.manual_seed(i)
            repo.add(arch="test_resnet", weights=build_model("test_resnet", 2, 1).state_dict(), labels=["a", "b"],
                     name=f"t{i}", input=InputConfig(32, 1, (0.5,), (0.5,)), teacher_id=f"t{i}")
            on_teacher(f"t{i}", i + 1, 2, 0.1)
        return repo

    release, started = threading.Event(), threading.Event()
    nice = {}

    def slow_spec(teacher, embedder, **kw):
        nice.setdefault("spec", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        started.set()
        assert release.wait(60)
        rng = np.random.default_rng(0)
        view = TeacherView(rng.normal(size=(4, 8)), np.full((4, 2), 0.5), rng.normal(size=(2, 8)))
        return build_specification(teacher, None, None, np.array([0, 0, 1, 1]), embeddings=rng.normal(size=(4, 16)),
                                   view=view)

    monkeypatch.setattr(hubscout.zoo, "build_demo_zoo", build)
    monkeypatch.setattr(spec_files, "ReferenceEmbedder", lambda device=None: None)
    monkeypatch.setattr(spec_files, "specification_for", slow_spec)
    s = Settings(data_dir=tmp_path / "var", repository_dir=tmp_path / "zoo", stale_after_seconds=30)
    nice["main"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        with TestClient(create_app(s)) as c:
            assert started.wait(30), c.get("/v1/info").json()
            assert c.get("/v1/info").json()["repository"]["state"] == "ready"
            assert c.get("/healthz").json()["status"] == "ok"
            items = c.get("/v1/teachers").json()["items"]
            assert {(t["id"], t["spec"]["status"]) for t in items} == {("t0", "pending"), ("t1", "pending")}
            ds = c.post("/v1/datasets", files={"file": ("t.npz", npz_bytes(toy_dataset()))}).json()
            assert c.post("/v1/rankings", json={"dataset_id": ds["id"]}).status_code == 202
            db = Database(s)
            try:
                assert specs.due(db, s) == []  # held: no specification task queued in front of that ranking
            finally:
                db.dispose()
            release.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                statuses = {t["spec"]["status"] for t in c.get("/v1/teachers").json()["items"]}
                if statuses == {"ready"}:
                    break
                time.sleep(0.05)
            assert statuses == {"ready"}
            assert all((tmp_path / "zoo" / t / SPEC_FILE).is_file() for t in ("t0", "t1"))
    finally:
        release.set()
    assert nice["spec"] >= min(19, nice["main"] + 10)  # the specifications yield the cores to the workers
