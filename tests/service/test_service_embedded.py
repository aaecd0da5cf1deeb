"""The embedded default, as `hubscout serve` runs it: SQLite, the filesystem broker and a local Celery worker."""
from __future__ import annotations

import io
import itertools
import os
import signal
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from svc_helpers import EMBEDDED_MAX_UPLOAD, assert_problem, raw_post, wait_job

CHANCE = 1 / 3  # three footwear classes: 0.5 is 1.5 times chance on 300 test images


@pytest.fixture(scope="module")
def client(embedded_service):
    with httpx.Client(base_url=embedded_service.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(client, tmp_path_factory) -> dict:
    """The footwear target of tests/conftest.py (10 shots, seed 0) as the README sends it: an ImageFolder zip."""
    from hubscout.data import write_image_folder_zip
    from hubscout.sources import demo_target

    path = write_image_folder_zip(demo_target("footwear", 10, seed=0), tmp_path_factory.mktemp("zip") / "f.zip")
    r = client.post("/v1/datasets", files={"file": ("footwear.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def test_no_configuration_means_sqlite_filesystem_broker_and_local_storage(client, embedded_service):
    assert client.get("/healthz").json()["mode"] == "embedded"
    data = Path(embedded_service.env["HUBSCOUT_DATA_DIR"])
    assert (data / "hubscout.db").is_file()
    assert (data / "broker" / "queue").is_dir()
    assert (data / "storage").is_dir()
    assert "local Celery worker" in embedded_service.api.log()


def test_upload_rank_distil_download(client, dataset, footwear_test, tmp_path):
    from hubscout.distill import evaluate, load_student

    r = client.post("/v1/rankings", json={"dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    ranking = client.get(job["links"]["result"]).json()
    assert not any(t["cached"] for t in ranking["teachers"])

    t0 = time.monotonic()
    again = wait_job(client, client.post("/v1/rankings", json={"dataset_id": dataset["id"]}).json()["id"],
                     interval=0.02)
    wall = time.monotonic() - t0
    assert again["status"] == "succeeded"
    assert all(t["cached"] for t in client.get(again["links"]["result"]).json()["teachers"])
    assert wall < 1.0, f"cached ranking took {wall:.2f} s"

    best = ranking["teachers"][0]["teacher_id"]
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "teacher_ids": [best],
                                               "student_arch": "resnet10t", "epochs": 30, "min_steps": 0})
    job = wait_job(client, r.json()["id"], timeout=600, interval=0.5)
    assert job["status"] == "succeeded", job
    student = client.get(job["links"]["result"]).json()
    z = client.get(student["download"])
    assert z.status_code == 200
    zipfile.ZipFile(io.BytesIO(z.content)).extractall(tmp_path / "student")
    accuracy = evaluate(load_student(tmp_path / "student"), footwear_test)["accuracy"]
    assert accuracy > 1.5 * CHANCE, f"student accuracy {accuracy:.3f}"
    # The CE-only control beside it, on the same split; the epochs asked are the epochs run.
    assert student["ce_only"]["val_accuracy"] is not None and not student["ce_only"]["cached"]
    assert student["gain_vs_ce"] == pytest.approx(student["val_accuracy"] - student["ce_only"]["val_accuracy"])
    assert student["schedule"]["epochs"] == 30 == len(student["metrics"]["curves"]["epoch"])
    assert student["student"]["arch"] == "resnet10t" == student["student_arch"]
    # Another distillation option on the same data, student, schedule and seed: the control is read, not trained.
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "teacher_ids": [best], "lam": 2.0,
                                               "student_arch": "resnet10t", "epochs": 30, "min_steps": 0})
    job = wait_job(client, r.json()["id"], timeout=600, interval=0.5)
    again = client.get(job["links"]["result"]).json()
    assert again["ce_only"]["cached"] and again["ce_only"]["val_accuracy"] == student["ce_only"]["val_accuracy"]


def _local_worker_pid(serve_pid: int) -> int:
    children = []
    for task in Path(f"/proc/{serve_pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    for pid in children:
        if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no celery child of {serve_pid}: {children}")


def test_killed_local_worker_is_restarted_and_its_job_recovered(client, dataset, embedded_service):
    r = client.post("/v1/distillations", json={"dataset_id": dataset["id"], "ce_only": True,
                                               # long enough (seconds, not milliseconds) to be caught running
                                               "student_arch": "resnet10t", "epochs": 150,
                                               "min_steps": 0})
    job_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > 0.05:
            break
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.1)
    log_mark = len(embedded_service.api.log())
    os.kill(_local_worker_pid(embedded_service.api.pid), signal.SIGKILL)
    job = wait_job(client, job_id, timeout=600, interval=0.5)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    embedded_service.api.wait_for_log("restarting", timeout=5, since=log_mark)


def test_oversize_upload_is_cut_off_while_streaming(embedded_service):
    """A chunked upload with no Content-Length, far over the limit: the server answers 413 and stops reading
    long before the client would have finished."""
    total, chunk = 64 * 1024 * 1024, 64 * 1024
    head = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    response, sent = raw_post(embedded_service.base_url, "/v1/datasets",
                              {"Content-Type": "multipart/form-data; boundary=xyz"},
                              itertools.chain([head], itertools.repeat(b"\1" * chunk, total // chunk)), chunked=True)
    assert_problem(response, 413)
    # Socket buffers on both sides absorb some megabytes; the point is that the server gave up early.
    assert sent < total // 4, f"sent {sent} bytes of {total} before the server answered"
    assert sent >= EMBEDDED_MAX_UPLOAD - chunk
