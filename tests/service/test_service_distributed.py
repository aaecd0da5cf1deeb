"""The scale-out deployment for real: PostgreSQL, Redis, a uvicorn API and a Celery worker process."""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile

import httpx
import pytest
from sqlalchemy import func, select

from svc_helpers import OTHER_AUTH, assert_problem, npz_bytes, tiny_weights, wait_job

from service.tables import RankingRow, StudentRow, TeacherOutputRow

STUDENT = {"student_arch": "resnet10t", "epochs": 30, "min_steps": 0, "seed": 0}
CHANCE = 1 / 3  # three footwear classes: 0.5 is 1.5 times chance on 300 test images


@pytest.fixture(scope="module")
def client(pg_client):
    return pg_client


@pytest.fixture(scope="module")
def dataset(client) -> dict:
    """The footwear target of tests/conftest.py (10 shots, seed 0), uploaded once for the module."""
    from hubscout.sources import demo_target

    data = npz_bytes(demo_target("footwear", 10, seed=0))
    r = client.post("/v1/datasets", files={"file": ("footwear.npz", data)})
    assert r.status_code in (200, 201), r.text
    return r.json()


def outputs_rows(pg_service) -> tuple[int, int]:
    db = pg_service.db()
    try:
        with db.session() as s:
            return (s.scalar(select(func.count()).select_from(TeacherOutputRow)),
                    s.scalar(select(func.coalesce(func.sum(TeacherOutputRow.hits), 0))))
    finally:
        db.dispose()


def rank(client, dataset_id: str, **body) -> tuple[dict, dict, float]:
    t0 = time.monotonic()
    r = client.post("/v1/rankings", json={"dataset_id": dataset_id, **body})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = wait_job(client, r.json()["id"], interval=0.02)
    wall = time.monotonic() - t0
    assert job["status"] == "succeeded", job
    ranking = client.get(job["links"]["result"])
    assert ranking.status_code == 200
    return job, ranking.json(), wall


def test_health_reports_the_distributed_mode(client):
    body = client.get("/healthz").json()
    assert body == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
                    "mode": "distributed", "repository": {"state": "ready", "built": 0, "total": 0, "current": None,
                                                          "error": None, "elapsed_s": None}}


def test_upload_is_deduplicated(client, dataset, footwear_target):
    assert dataset["sha256"] == footwear_target.sha256
    assert dataset["class_counts"] == {"sandal": 10, "sneaker": 10, "ankle-boot": 10}
    again = client.post("/v1/datasets", files={"file": ("footwear.npz", npz_bytes(footwear_target))})
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]
    # Under another name: that name, the content shared (one copy in PostgreSQL's unique key too).
    copy = client.post("/v1/datasets", files={"file": ("copy.npz", npz_bytes(footwear_target))})
    assert copy.status_code in (200, 201) and copy.json()["name"] == "copy" and copy.json()["id"] != dataset["id"]
    assert copy.json()["sha256"] == dataset["sha256"]


def test_rank_then_rerank_from_cache(client, dataset, pg_service, quick_repo):
    n_teachers = len(quick_repo.ids())
    job, ranking, _ = rank(client, dataset["id"])
    assert job["progress"] == 1.0 and job["started_at"] and job["finished_at"]
    assert job["links"]["result"] == f"/v1/rankings/{job['result_id']}"
    # The library's JSON (what `hubscout rank --json` prints), with the ids around it.
    assert ranking["job_id"] == job["id"] and ranking["dataset_id"] == dataset["id"]
    # No metric named: the defaults, the default metric first (it orders), OT beside it for the plan.
    from hubscout.scores import DEFAULT_METRIC, DEFAULT_METRICS, METRICS

    assert ranking["metrics"] == list(DEFAULT_METRICS) and ranking["primary"] == DEFAULT_METRIC
    assert ranking["directions"] == {m: METRICS[m].direction for m in DEFAULT_METRICS}
    assert ranking["classes"] == ["sandal", "sneaker", "ankle-boot"] and ranking["n_samples"] == 30
    teachers = ranking["teachers"]
    assert sorted(t["teacher_id"] for t in teachers) == sorted(quick_repo.ids())
    assert [t["rank"] for t in teachers] == list(range(1, n_teachers + 1))
    primary = [t["scores"][DEFAULT_METRIC]["value"] for t in teachers]
    assert primary == sorted(primary, reverse=METRICS[DEFAULT_METRIC].direction == "higher")
    assert set(teachers[0]["correspondences"]) == {"sandal", "sneaker", "ankle-boot"}
    rows, hits = outputs_rows(pg_service)
    assert rows == n_teachers  # one cached forward pass per teacher

    # Same dataset again: no forward pass, answered well under a second end to end.
    job2, again, wall = rank(client, dataset["id"])
    assert all(t["cached"] for t in again["teachers"])
    assert [t["teacher_id"] for t in again["teachers"]] == [t["teacher_id"] for t in teachers]
    assert wall < 1.0, f"cached ranking took {wall:.2f} s"
    assert outputs_rows(pg_service)[0] == n_teachers

    # A metric not computed before: scored from the cached outputs, still no forward pass.
    job3, leep, _ = rank(client, dataset["id"], metrics=["leep", "ot"], top_k=2)
    assert len(leep["teachers"]) == 2 and leep["primary"] == "leep"
    assert all(t["cached"] for t in leep["teachers"])
    rows3, hits3 = outputs_rows(pg_service)
    assert rows3 == n_teachers and hits3 >= hits + n_teachers


def test_a_new_teacher_is_the_only_one_computed(client, dataset, pg_service):
    rank(client, dataset["id"])  # everything cached
    rows_before = outputs_rows(pg_service)[0]
    r = client.post("/v1/teachers", files={"weights": ("w.safetensors", tiny_weights(classes=4, seed=5))},
                    data={"arch": "test_resnet", "name": "late arrival", "labels": "\n".join("abcd"),
                          "input": json.dumps({"size": 32, "channels": 1, "mean": [0.5], "std": [0.5]})})
    assert r.status_code == 201, r.text
    try:
        _, ranking, _ = rank(client, dataset["id"])
        computed = [t["teacher_id"] for t in ranking["teachers"] if not t["cached"]]
        assert computed == ["late-arrival"]
        assert outputs_rows(pg_service)[0] == rows_before + 1
    finally:
        assert client.delete("/v1/teachers/late-arrival").status_code == 204


def test_distil_download_and_load_the_student(client, dataset, footwear_test, tmp_path):
    from hubscout.distill import evaluate, load_student

    _, ranking, _ = rank(client, dataset["id"])
    best = ranking["teachers"][0]["teacher_id"]
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "teacher_ids": [best], **STUDENT})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=600, interval=0.5)
    assert job["status"] == "succeeded", job
    assert job["links"]["result"] == f"/v1/students/{job['result_id']}"
    student = client.get(job["links"]["result"]).json()
    assert student["student_arch"] == "resnet10t" and student["teacher_ids"] == [best]
    assert student["config"]["hyperparameters"]["epochs"] == 30
    assert "train_accuracy" in student["metrics"]

    z = client.get(student["download"])
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    assert hashlib.sha256(z.content).hexdigest() == student["archive_sha256"]
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert {"model.safetensors", "config.json", "metrics.json", "labels.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "student")
    accuracy = evaluate(load_student(tmp_path / "student"), footwear_test)["accuracy"]
    assert accuracy > 1.5 * CHANCE, f"student accuracy {accuracy:.3f} on the held-out test set"


def _running(client, job_id: str, timeout: float = 180) -> dict:
    """Wait until the job reports progress from inside the library (so it is really mid-task)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > 0.05:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(job)


def test_a_job_survives_its_worker_being_killed(client, dataset, pg_service):
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "ce_only": True,
                                               # long enough (seconds, not milliseconds) to be caught running
                                               "student_arch": "resnet10t", "epochs": 150,
                                               "min_steps": 0})
    job_id = r.json()["id"]
    _running(client, job_id)
    pg_service.worker.kill()  # SIGKILL mid-task: no chance to clean up
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    pg_service.restart_worker("pg-worker-2")
    job = wait_job(client, job_id, timeout=600, interval=0.5)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    db = pg_service.db()
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(StudentRow).where(StudentRow.job_id == job_id)) == 1
    finally:
        db.dispose()


def test_cancel_a_running_job(client, dataset, pg_service):
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "ce_only": True,
                                               "student_arch": "test_resnet", "epochs": 200,
                                               "min_steps": 0})
    job_id = r.json()["id"]
    _running(client, job_id)
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    pg_service.worker.wait_for_log(f"job {job_id} stopped", timeout=120)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["links"]["result"] is None
    # The worker is free again at once.
    _, _, wall = rank(client, dataset["id"])
    assert wall < 5


def test_running_a_finished_job_again_changes_nothing(client, dataset, pg_service):
    from service.queue import JobQueue

    job, _, _ = rank(client, dataset["id"])
    queue = JobQueue(pg_service.settings())
    try:
        queue.enqueue(job["id"])  # a duplicate delivery
    finally:
        queue.close()
    pg_service.worker.wait_for_log(f"job {job['id']} skipped: succeeded", timeout=60)
    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    db = pg_service.db()
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(RankingRow).where(RankingRow.job_id == job["id"])) == 1
    finally:
        db.dispose()


def test_errors_are_problems_on_the_real_server(client):
    assert_problem(client.get("/v1/jobs/unknown"), 404)
    assert_problem(client.post("/v1/rankings", content=b"{", headers={"content-type": "application/json"}), 422)
    assert_problem(client.post("/v1/datasets", files={"file": ("x.zip", b"junk")}), 422)


def test_another_key_sees_nothing_of_this_one(client, dataset, pg_service):
    job, ranking, _ = rank(client, dataset["id"])
    with httpx.Client(base_url=pg_service.base_url, timeout=60, headers=OTHER_AUTH) as other:
        for url in (f"/v1/datasets/{dataset['id']}", f"/v1/jobs/{job['id']}", job["links"]["result"]):
            assert_problem(other.get(url), 404)
        assert job["id"] not in [j["id"] for j in other.get("/v1/jobs").json()["items"]]
        r = other.post("/v1/rankings", json={"dataset_id": dataset["id"]})
        assert "does not exist" in assert_problem(r, 422)["detail"]
        assert_problem(other.delete(f"/v1/jobs/{job['id']}"), 404)
        # The same content uploaded with the other key is a dataset of its own, not a hit on this key's copy.
        from hubscout.sources import demo_target

        again = other.post("/v1/datasets", files={"file": ("f.npz", npz_bytes(demo_target("footwear", 10, seed=0)))})
        assert again.status_code == 201 and again.json()["id"] != dataset["id"]
    assert_problem(httpx.get(f"{pg_service.base_url}/v1/jobs/{job['id']}"), 401)


def _upload(client, shots: int, seed: int) -> dict:
    from hubscout.sources import demo_target

    r = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(demo_target("footwear", shots, seed=seed)))})
    assert r.status_code == 201, r.text
    return r.json()


def _count(pg_service, model, *where) -> int:
    db = pg_service.db()
    try:
        with db.session() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        db.dispose()


def test_a_ranking_survives_its_worker_being_killed(client, pg_service, quick_repo):
    # 600 images nobody has ranked: every forward pass is computed, and the 224-px teacher's alone takes tens of
    # seconds, so the worker is killed mid-ranking however fast the scoring (a few-shot upload was ranked in the
    # moment between "running" and the kill once the H-score got faster).
    fresh = _upload(client, 200, seed=1)
    r = client.post("/v1/rankings", json={"dataset_id": fresh["id"]})
    job_id = r.json()["id"]
    _running(client, job_id)
    pg_service.worker.kill()
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    pg_service.restart_worker("pg-worker-3")
    job = wait_job(client, job_id, timeout=300, interval=0.5)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    ranking = client.get(job["links"]["result"]).json()
    assert sorted(t["teacher_id"] for t in ranking["teachers"]) == sorted(quick_repo.ids())
    assert _count(pg_service, RankingRow, RankingRow.job_id == job_id) == 1


def test_identical_rankings_at_once_compute_the_teacher_outputs_once(client, pg_service, quick_repo):
    from svc_helpers import celery_worker

    twin = celery_worker("pg-worker-twin", pg_service.env, pg_service.log_dir)
    try:
        # 300 images: the first ranking is still in its forward passes when the second starts, however fast the
        # scoring.
        fresh = _upload(client, 100, seed=2)
        body = {"dataset_id": fresh["id"], "metrics": ["ot", "leep"]}
        ids = [client.post("/v1/rankings", json=body).json()["id"] for _ in range(2)]
        done = [wait_job(client, i, timeout=300, interval=0.2) for i in ids]
        assert [j["status"] for j in done] == ["succeeded", "succeeded"], done
        rankings = [client.get(j["links"]["result"]).json() for j in done]
        computed = [[t["teacher_id"] for t in r["teachers"] if not t["cached"]] for r in rankings]
        # One job ran every forward pass; the other waited for it and found everything scored.
        assert sorted(map(len, computed)) == [0, len(quick_repo.ids())], computed
        assert [t["teacher_id"] for t in rankings[0]["teachers"]] == [t["teacher_id"] for t in rankings[1]["teachers"]]
        logs = pg_service.worker.log() + twin.log()
        assert all(any(f"job {i} (ranking)" in w.log() for i in ids) for w in (pg_service.worker, twin)), \
            "the two rankings did not run on the two workers at once"
        assert "waits for a ranking of the same data" in logs
    finally:
        twin.stop()
