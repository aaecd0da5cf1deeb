"""Webhooks for real: the Celery worker of the PostgreSQL/Redis deployment calls a receiver listening on a
loopback port, signs every call, retries with backoff and records the one delivery."""
from __future__ import annotations

import json
import time

import pytest

from svc_helpers import Receiver, assert_problem, free_port, npz_bytes, wait_job

from service.webhooks import verify

TEACHER = "fashion-footwear"


@pytest.fixture(scope="module")
def client(pg_client):
    return pg_client


@pytest.fixture(scope="module")
def dataset_id(client) -> str:
    from hubscout.sources import demo_target

    r = client.post("/v1/datasets", files={"file": ("footwear.npz", npz_bytes(demo_target("footwear", 10, seed=0)))})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def secret(pg_service) -> str:
    return pg_service.env["HUBSCOUT_WEBHOOK_SECRET"]


def wait_callback(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["callback"]["state"] in ("delivered", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job)


def check_signed(call, secret: str) -> dict:
    h = call.headers
    assert h["content-type"] == "application/json"
    assert verify(secret, h["x-hubscout-timestamp"], call.body, h["x-hubscout-signature"])
    assert h["x-hubscout-signature"].startswith("sha256=")
    # A changed body, another key or a stale timestamp fail the check.
    assert not verify(secret, h["x-hubscout-timestamp"], call.body + b" ", h["x-hubscout-signature"])
    assert not verify("another-key", h["x-hubscout-timestamp"], call.body, h["x-hubscout-signature"])
    assert not verify(secret, str(int(h["x-hubscout-timestamp"]) - 3600), call.body, h["x-hubscout-signature"])
    return json.loads(call.body)


def test_a_finished_ranking_calls_back_once_signed(client, dataset_id, secret):
    with Receiver() as rx:
        r = client.post("/v1/rankings", json={"dataset_id": dataset_id, "teacher_ids": [TEACHER],
                                              "callback_url": rx.url})
        assert r.status_code == 202, r.text
        assert r.json()["callback"] == {"url": rx.url, "state": "waiting", "attempts": 0, "last_error": None,
                                        "done_at": None}
        job = wait_job(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        (call,) = rx.wait_for(1)
        job = wait_callback(client, job["id"])
        time.sleep(1.0)  # longer than the retry backoff: a second call would have come by now
        assert len(rx.requests) == 1
    event = check_signed(call, secret)
    assert call.path == "/hook" and call.headers["x-hubscout-delivery"] == job["id"]
    assert call.headers["x-hubscout-event"] == event["event"] == "job.succeeded"
    assert event["job"]["id"] == job["id"] and event["job"]["kind"] == "ranking"
    assert event["job"]["status"] == "succeeded" and event["job"]["error"] is None
    assert event["job"]["result_id"] == job["result_id"] and event["job"]["result"] == job["links"]["result"]
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 1
    assert job["callback"]["done_at"] and job["callback"]["last_error"] is None


def test_a_failing_receiver_is_retried_with_backoff_then_served_once(client, dataset_id, secret):
    with Receiver(statuses=(500, 503)) as rx:
        r = client.post("/v1/rankings", json={"dataset_id": dataset_id, "teacher_ids": [TEACHER],
                                              "callback_url": rx.url})
        assert r.status_code == 202, r.text
        calls = rx.wait_for(3)
        job = wait_callback(client, r.json()["id"])
        time.sleep(1.0)
        assert len(rx.requests) == 3
    assert [c.answered for c in calls] == [500, 503, 200]
    bodies = [check_signed(c, secret) for c in calls]
    assert bodies[0] == bodies[1] == bodies[2] and bodies[0]["job"]["status"] == "succeeded"
    # Backoff 0.2 s then 0.4 s (lower bounds: a retry never comes early).
    assert calls[1].at - calls[0].at >= 0.18 and calls[2].at - calls[1].at >= 0.38
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 3


def test_an_unreachable_callback_is_given_up_after_the_last_attempt(client, dataset_id):
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    r = client.post("/v1/rankings", json={"dataset_id": dataset_id, "teacher_ids": [TEACHER], "callback_url": dead})
    assert r.status_code == 202, r.text
    job = wait_callback(client, r.json()["id"])
    assert job["status"] == "succeeded"  # the job's own outcome does not depend on its callback
    cb = job["callback"]
    assert cb["state"] == "failed" and cb["attempts"] == 4 and cb["done_at"]
    assert cb["last_error"].startswith("gave up after 4 attempts; last: ConnectError")


def test_a_cancelled_job_calls_back(client, dataset_id, secret):
    with Receiver() as rx:
        r = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": [TEACHER],
                                                   "student_arch": "test_resnet", "epochs": 200,
                                                   "callback_url": rx.url})
        assert r.status_code == 202, r.text
        assert client.delete(f"/v1/jobs/{r.json()['id']}").status_code == 200
        (call,) = rx.wait_for(1)
        job = wait_callback(client, r.json()["id"])
    event = check_signed(call, secret)
    assert event["event"] == "job.cancelled" and event["job"]["status"] == "cancelled"
    assert event["job"]["result_id"] is None and event["job"]["result"] is None
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 1


@pytest.mark.parametrize("url, needle", [
    ("ftp://example.org/hook", "http or https"),
    ("http:///no-host", "must name a host"),
    ("https://user:pw@example.org/hook", "credentials"),
    ("not a url", "whitespace"),
    ("https://example.org:99999/hook", "not a valid URL"),
])
def test_bad_callback_urls_are_refused(client, dataset_id, url, needle):
    for path, extra in (("/v1/rankings", {}), ("/v1/distillations", {"teacher_ids": [TEACHER]})):
        body = assert_problem(client.post(path, json={"dataset_id": dataset_id, "callback_url": url, **extra}), 422)
        assert needle in body["detail"], body
