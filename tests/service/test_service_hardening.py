"""Issue 15 against real servers: bounded memory for small hostile requests, poisoned teachers and numbers,
teacher owners, Idempotency-Key, one status for malformed bodies.

``hard``: uvicorn + a Celery worker on a PostgreSQL database and a Redis db of their own, three keys (two plain,
one admin), the decoded-size limit at 10^8 bytes, and a catalogue of three tiny shared teachers. ``lite``: uvicorn
alone on SQLite (the embedded default, with keys), for idempotency on the other database.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select as sa_select

from svc_helpers import (ADMIN_AUTH, ADMIN_KEY, API_KEY, AUTH, OTHER_AUTH, OTHER_KEY, REDIS_BASE, ROOT, PeakRSS,
                         Proc, assert_problem, base_env, celery_worker, claimed_redis_db, create_database,
                         drop_database, free_port, make_tiny_repo, npz_bytes, raw_post, tiny_weights, toy_dataset,
                         uvicorn_server, wait_job, zip_bytes)

from service.db import Database
from service.settings import Settings
from service.tables import DatasetRow, IdempotencyRow, JobRow, TeacherRow

MAX_DECODED = 100_000_000
RSS_BOUND = 256 * 1024 * 1024
TEACHER_INPUT = json.dumps({"size": 32, "channels": 1, "mean": [0.5], "std": [0.5]})


@dataclass
class Server:
    base_url: str
    api: Proc
    settings: Settings

    def db(self) -> Database:
        return Database(self.settings)

    def counts(self) -> dict:
        """Everything a refused request must leave as it was: rows, stored files, teacher folders."""
        db = self.db()
        try:
            with db.session() as s:
                rows = {m.__tablename__: s.scalar(sa_select(func.count()).select_from(m))
                        for m in (DatasetRow, TeacherRow, JobRow, IdempotencyRow)}
        finally:
            db.dispose()
        root = self.settings.storage_root
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and "health" not in p.parts)
        return {**rows, "files": files, "folders": sorted(p.name for p in self.settings.repository_dir.iterdir())}

    def assert_alive(self) -> None:
        assert self.api.alive(), self.api.log()[-3000:]
        assert httpx.get(f"{self.base_url}/healthz", timeout=30).status_code == 200


def _server_env(tmp: Path, **extra: str) -> dict[str, str]:
    make_tiny_repo(tmp / "zoo")
    return base_env(HUBSCOUT_DATA_DIR=str(tmp / "data"), HUBSCOUT_REPOSITORY_DIR=str(tmp / "zoo"),
                    HUBSCOUT_API_KEYS=f"{API_KEY},{OTHER_KEY}", HUBSCOUT_ADMIN_KEYS=ADMIN_KEY,
                    HUBSCOUT_BUILD_DEMO_ZOO="false", HUBSCOUT_MAX_DECODED_BYTES=str(MAX_DECODED),
                    HUBSCOUT_HEARTBEAT_SECONDS="0.5", **extra)


@pytest.fixture(scope="module")
def hard(postgres_admin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hard")
    name = f"hubscout_test_hard_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_admin, name)
    try:
        with claimed_redis_db(REDIS_BASE) as redis:
            env = _server_env(tmp, DATABASE_URL=url, CELERY_BROKER_URL=redis)
            done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            worker = celery_worker("hard-worker", env, tmp)
            try:
                port = free_port()
                api = uvicorn_server("hard-api", env, tmp, port)
                try:
                    yield Server(f"http://127.0.0.1:{port}", api,
                                 Settings(database_url=url, celery_broker_url=redis, data_dir=tmp / "data",
                                          repository_dir=tmp / "zoo"))
                finally:
                    api.stop()
            finally:
                worker.stop()
    finally:
        drop_database(postgres_admin, name)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lite")
    env = _server_env(tmp)
    port = free_port()
    api = uvicorn_server("lite-api", env, tmp, port)
    try:
        yield Server(f"http://127.0.0.1:{port}", api, Settings(data_dir=tmp / "data", repository_dir=tmp / "zoo"))
    finally:
        api.stop()


def client(server: Server, auth=AUTH) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=auth, timeout=120)


# ------------------------------------------------------------------------------------------------ payloads

def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An npz whose images header claims ``shape`` (uint8) over a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.array([0, 1]))
    return zip_bytes({"images.npy": header.getvalue() + b"\0" * 64, "labels.npy": labels.getvalue()})


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _teacher_form(**over) -> dict:
    fields = {"arch": "test_resnet", "name": "Uploaded", "labels": json.dumps(["x", "y", "z"]),
              "input": TEACHER_INPUT}
    fields.update(over)
    return fields


def _upload_teacher(c: httpx.Client, weights: bytes | None = None, method: str = "POST", path: str = "/v1/teachers",
                    **form) -> httpx.Response:
    return c.request(method, path, data=_teacher_form(**form),
                     files={"weights": ("w.safetensors", weights or tiny_weights())})


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# ------------------------------------------------------------------------------------------------ memory

def _label_bomb(label: int):
    return lambda c: c.post("/v1/datasets", files={"file": ("l.npz", _npz(
        images=np.zeros((10, 2, 2), np.uint8), labels=np.array([0] * 9 + [label], np.int64)))})


def _blank_pngs(c: httpx.Client) -> httpx.Response:
    # 40 blank 1024×1024 RGB PNGs: a few kB of zip, 126 MB decoded, over the server's 10^8.
    png = _png(np.zeros((1024, 1024, 3), np.uint8))
    payload = zip_bytes({f"{'ab'[i % 2]}/{i}.png": png for i in range(40)})
    assert len(payload) < 200_000
    return c.post("/v1/datasets", files={"file": ("blank.zip", payload)})


def _huge_json(chunked: bool):
    def send(c: httpx.Client) -> httpx.Response:
        size = 250_000_000
        headers = {"Authorization": c.headers["authorization"], "Content-Type": "application/json"}
        if not chunked:
            headers["Content-Length"] = str(size)
        piece = b" " * 262_144
        response, sent = raw_post(str(c.base_url), "/v1/rankings", headers,
                                  (piece for _ in range(size // len(piece))), chunked=chunked)
        assert sent < size // 10, f"{sent} bytes sent before the server answered"
        return response
    return send


MEMORY_CASES = {
    # name: (request, status, words of the detail)
    "1. label 30,000,000 without classes": (_label_bomb(30_000_000), 413, ["classes", "limit"]),
    "1. label 2**62 without classes": (_label_bomb(2**62), 413, ["classes", "limit"]),
    "2. 40 blank 1024 px PNGs": (_blank_pngs, 413, ["decode", "limit"]),
    "3. vit_tiny with embed_dim 4096": (lambda c: _upload_teacher(
        c, arch="vit_tiny_patch16_224", arch_kwargs=json.dumps({"embed_dim": 4096, "num_heads": 16})), 422,
        ["parameters", "limit"]),
    "3. vit_huge": (lambda c: _upload_teacher(c, arch="vit_huge_patch14_224"), 422, ["parameters", "limit"]),
    "4. 250 MB JSON body, declared": (_huge_json(chunked=False), 413, ["limit"]),
    "4. 250 MB JSON body, streamed": (_huge_json(chunked=True), 413, ["limit"]),
    "5. npz header declaring 10^12 elements": (lambda c: c.post("/v1/datasets", files={"file": (
        "h.npz", _npz_declaring((10**6, 1000, 1000)))}), 422, ["declares", "1000000000000"]),
    "5. teacher metadata nested 5,000 deep": (lambda c: _upload_teacher(c, metadata=_nested(5000)), 422,
                                              ["metadata", "deeper"]),
}


def test_each_small_hostile_request_is_a_4xx_in_bounded_memory(hard):
    growth = {}
    with client(hard) as c:
        # The first teacher upload imports timm's model registry (about 200 MB, once per process) and the first
        # zip PIL's plugins: warmed up with two ordinary bad requests, so each case measures only itself.
        assert_problem(_upload_teacher(c, labels=json.dumps(["x", "y"])), 422)
        corrupt = zip_bytes({"a/1.png": b"no", "b/1.png": b"no"})
        assert_problem(c.post("/v1/datasets", files={"file": ("w.zip", corrupt)}), 422)
        for case, (send, status, words) in MEMORY_CASES.items():
            before = hard.counts()
            with PeakRSS(hard.api.pid) as rss:
                r = send(c)
            body = assert_problem(r, status)
            for word in words:
                assert word in body["detail"], (case, body)
            growth[case] = rss.growth
            assert rss.growth < RSS_BOUND, f"{case}: the API grew by {rss.growth / 2**20:.0f} MB"
            assert hard.counts() == before, f"{case} stored something"
            hard.assert_alive()
    print({k: f"{v / 2**20:.1f} MB" for k, v in growth.items()})


# ------------------------------------------------------------------------------------------------ numbers

@pytest.mark.parametrize("input_config, needle", [
    ({"size": 32, "channels": 1, "mean": [0.5], "std": [float("nan")]}, "std"),
    ({"size": 32, "channels": 1, "mean": [0.5], "std": [0.0]}, "std"),
    ({"size": 32, "channels": 1, "mean": [0.5], "std": [-1.0]}, "std"),
    ({"size": 32, "channels": 1, "mean": [float("inf")], "std": [0.5]}, "mean"),
])
def test_non_finite_or_non_positive_input_configs_are_refused(hard, input_config, needle):
    before = hard.counts()
    with client(hard) as c:
        r = _upload_teacher(c, input=json.dumps(input_config), name="poisoned input")
    assert needle in assert_problem(r, 422)["detail"]
    assert hard.counts() == before
    hard.assert_alive()


def _overflowing_weights() -> bytes:
    """Finite weights whose outputs are not: the classifier at 3e38 overflows every logit to inf."""
    from safetensors.torch import load, save

    state = load(tiny_weights(seed=4))
    state["fc.weight"] = state["fc.weight"].clone().fill_(3e38)
    return save(state)


def test_a_teacher_with_non_finite_outputs_is_left_out_of_a_ranking_with_a_note(hard):
    ds = toy_dataset(n=12, seed=11)
    with client(hard) as c, client(hard, OTHER_AUTH) as other:
        r = _upload_teacher(c, _overflowing_weights(), name="Overflowing", id="overflowing")
        assert r.status_code == 201, r.text
        try:
            dataset = c.post("/v1/datasets", files={"file": ("t.npz", npz_bytes(ds))}).json()["id"]
            job = c.post("/v1/rankings", json={"dataset_id": dataset, "teacher_ids": ["overflowing", "tiny-0"]})
            assert job.status_code == 202, job.text
            done = wait_job(c, job.json()["id"])
            assert done["status"] == "succeeded", done
            ranking = c.get(done["links"]["result"]).json()
            assert [t["teacher_id"] for t in ranking["teachers"]] == ["tiny-0"]
            assert [e["teacher_id"] for e in ranking["excluded"]] == ["overflowing"]
            assert "not finite" in ranking["excluded"][0]["reason"]
            # Another key's ranking of "every teacher" neither fails nor sees the teacher.
            theirs = other.post("/v1/datasets", files={"file": ("t.npz", npz_bytes(ds))}).json()["id"]
            job = other.post("/v1/rankings", json={"dataset_id": theirs, "shortlist": 0})
            done = wait_job(other, job.json()["id"])
            assert done["status"] == "succeeded", done
            ranking = other.get(done["links"]["result"]).json()
            assert sorted(t["teacher_id"] for t in ranking["teachers"]) == ["tiny-0", "tiny-1", "tiny-2"]
            assert ranking["excluded"] == []
        finally:
            assert c.delete("/v1/teachers/overflowing").status_code == 204
    hard.assert_alive()


def test_a_16_bit_png_is_scaled_to_8_bits(hard):
    from hubscout.data import load_dataset

    ramp = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    members = {"a/ramp.png": _png(ramp), "a/white.png": _png(np.full((16, 16), 65535, np.uint16)),
               "b/mid.png": _png(np.full((16, 16), 32768, np.uint16)), "b/black.png": _png(np.zeros((16, 16),
                                                                                                   np.uint16))}
    with client(hard) as c:
        r = c.post("/v1/datasets", files={"file": ("deep.zip", zip_bytes(members))})
    assert r.status_code == 201, r.text
    ds = load_dataset(hard.settings.storage_root / "datasets" / f"{r.json()['id']}.npz")
    by_name = dict(zip(sorted(members), ds.images[..., 0]))  # the loader reads members in name order
    assert np.array_equal(by_name["a/ramp.png"], (ramp >> 8).astype(np.uint8))
    assert (by_name["a/white.png"] == 255).all() and (by_name["b/mid.png"] == 128).all()
    assert (by_name["b/black.png"] == 0).all()


def test_same_named_class_folders_in_different_parents_are_refused(hard):
    png = _png(np.zeros((8, 8), np.uint8))
    before = hard.counts()
    with client(hard) as c:
        r = c.post("/v1/datasets", files={"file": ("clash.zip", zip_bytes(
            {"p/cat/1.png": png, "q/cat/2.png": png, "p/dog/3.png": png}))})
    detail = assert_problem(r, 422)["detail"]
    assert "'cat'" in detail and "p/cat" in detail and "q/cat" in detail
    assert hard.counts() == before


# ------------------------------------------------------------------------------------------------ owners

def test_teachers_belong_to_their_key_and_the_shared_catalogue_to_admins(hard):
    with client(hard) as mine, client(hard, OTHER_AUTH) as theirs, client(hard, ADMIN_AUTH) as admin:
        r = _upload_teacher(mine, name="Mine", id="mine")
        assert r.status_code == 201, r.text
        folder = hard.settings.repository_dir / "mine"
        assert mine.get("/v1/teachers/mine").status_code == 200
        assert "mine" in [t["id"] for t in mine.get("/v1/teachers").json()["items"]]
        # Another key: not seen, not listed, not deletable, not replaceable, not rankable.
        assert_problem(theirs.get("/v1/teachers/mine"), 404)
        listed = theirs.get("/v1/teachers").json()
        assert [t["id"] for t in listed["items"]] == ["tiny-0", "tiny-1", "tiny-2"] and listed["total"] == 3
        assert_problem(theirs.delete("/v1/teachers/mine"), 404)
        assert_problem(_upload_teacher(theirs, method="PUT", path="/v1/teachers/mine", name="Stolen"), 404)
        ds = theirs.post("/v1/datasets", files={"file": ("o.npz", npz_bytes(toy_dataset(seed=3)))}).json()["id"]
        body = assert_problem(theirs.post("/v1/rankings", json={"dataset_id": ds, "teacher_ids": ["mine"]}), 422)
        assert "unknown teacher" in body["detail"]
        assert folder.is_dir() and mine.get("/v1/teachers/mine").json()["name"] == "Mine"
        # The shared catalogue: every key sees it, only an admin changes it.
        assert_problem(mine.delete("/v1/teachers/tiny-1"), 403)
        assert_problem(_upload_teacher(mine, method="PUT", path="/v1/teachers/tiny-1", name="Mine now"), 403)
        assert (hard.settings.repository_dir / "tiny-1").is_dir()
        r = _upload_teacher(admin, tiny_weights(seed=9), method="PUT", path="/v1/teachers/tiny-1", name="tiny 1")
        assert r.status_code == 200, r.text
        assert theirs.get("/v1/teachers/tiny-1").json()["weights_sha256"] == r.json()["weights_sha256"]
        # The owner replaces its own; an admin sees and deletes anyone's.
        r = _upload_teacher(mine, tiny_weights(seed=5), method="PUT", path="/v1/teachers/mine", name="Mine v2")
        assert r.status_code == 200 and r.json()["name"] == "Mine v2", r.text
        assert_problem(theirs.get("/v1/teachers/mine"), 404)  # still its owner's after the replacement
        assert "mine" in [t["id"] for t in admin.get("/v1/teachers").json()["items"]]
        assert admin.delete("/v1/teachers/mine").status_code == 204
        assert not folder.exists()
        assert_problem(mine.get("/v1/teachers/mine"), 404)
    hard.assert_alive()


def test_owners_survive_a_table_rebuilt_from_the_folder(hard):
    from hubscout.teachers import Repository

    from service.teacher_sync import sync

    with client(hard) as mine, client(hard, OTHER_AUTH) as theirs:
        assert _upload_teacher(mine, name="Kept", id="kept").status_code == 201
        try:
            db = hard.db()
            try:
                with db.session() as s:
                    s.execute(TeacherRow.__table__.delete().where(TeacherRow.id == "kept"))
                    s.commit()
                sync(db, Repository(hard.settings.repository_dir))
            finally:
                db.dispose()
            assert mine.get("/v1/teachers/kept").status_code == 200
            assert_problem(theirs.get("/v1/teachers/kept"), 404)
        finally:
            assert mine.delete("/v1/teachers/kept").status_code == 204


# ------------------------------------------------------------------------------------------------ idempotency

def _jobs(c: httpx.Client) -> int:
    return c.get("/v1/jobs").json()["total"]


def _check_idempotency(server: Server) -> None:
    key = f"k-{uuid.uuid4().hex}"
    with client(server) as c, client(server, OTHER_AUTH) as other:
        ds = c.post("/v1/datasets", files={"file": ("i.npz", npz_bytes(toy_dataset(seed=21)))},
                    headers={"Idempotency-Key": key + "-ds"})
        assert ds.status_code == 201, ds.text
        again = c.post("/v1/datasets", files={"file": ("i.npz", npz_bytes(toy_dataset(seed=21)))},
                       headers={"Idempotency-Key": key + "-ds"})
        # The first answer, 201 and all, not the 200 that a plain second upload of the same content gets.
        assert again.status_code == 201 and again.json()["id"] == ds.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        dataset = ds.json()["id"]

        before = _jobs(c)
        body = {"dataset_id": dataset, "teacher_ids": ["tiny-0"]}
        first = c.post("/v1/rankings", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        second = c.post("/v1/rankings", json=body, headers={"Idempotency-Key": key})
        assert second.status_code == 202 and second.json()["id"] == first.json()["id"]
        assert second.headers["location"] == f"/v1/jobs/{first.json()['id']}"
        assert _jobs(c) == before + 1
        body_other = assert_problem(c.post("/v1/rankings", json={**body, "top_k": 1},
                                           headers={"Idempotency-Key": key}), 422)
        assert "Idempotency-Key" in body_other["detail"]
        assert _jobs(c) == before + 1
        # Scoped per API key: the same header from another key is another request.
        theirs = other.post("/v1/datasets", files={"file": ("i.npz", npz_bytes(toy_dataset(seed=21)))}).json()["id"]
        r = other.post("/v1/rankings", json={"dataset_id": theirs, "teacher_ids": ["tiny-0"]},
                       headers={"Idempotency-Key": key})
        assert r.status_code == 202 and r.json()["id"] != first.json()["id"]
        assert_problem(c.post("/v1/rankings", json=body, headers={"Idempotency-Key": "x" * 300}), 422)

        # Racing requests with one key create one job: the others get it, or a 409 while it is being created.
        race_key = key + "-race"
        answers: list[httpx.Response] = []

        def send() -> None:
            with client(server) as mine:
                answers.append(mine.post("/v1/rankings", json=body, headers={"Idempotency-Key": race_key}))

        before = _jobs(c)
        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers if a.status_code == 202}) == 1
        assert _jobs(c) == before + 1
        final = c.post("/v1/rankings", json=body, headers={"Idempotency-Key": race_key})
        assert final.status_code == 202 and final.json()["id"] in {a.json()["id"] for a in answers
                                                                   if a.status_code == 202}
    server.assert_alive()


def test_idempotency_keys_on_postgresql(hard):
    _check_idempotency(hard)


def test_idempotency_keys_on_sqlite(lite):
    _check_idempotency(lite)


def test_a_failed_request_releases_its_idempotency_key(lite):
    with client(lite) as c:
        body = {"dataset_id": "ds_missing", "teacher_ids": ["tiny-0"]}
        assert_problem(c.post("/v1/rankings", json=body, headers={"Idempotency-Key": "retry-me"}), 422)
        ds = c.post("/v1/datasets", files={"file": ("r.npz", npz_bytes(toy_dataset(seed=5)))}).json()["id"]
        r = c.post("/v1/rankings", json={**body, "dataset_id": ds}, headers={"Idempotency-Key": "retry-me"})
        assert r.status_code == 202, r.text


# ------------------------------------------------------------------------------------------------ protocol

@pytest.mark.parametrize("payload, needle", [
    (b'\xff\xfe{"dataset_id": "x"}', "UTF-8"),
    (_nested(5000).encode(), "deeper"),
    (b'{"dataset_id": ', "malformed JSON"),
    (b'{"dataset_id": "x",}', "malformed JSON"),
])
def test_malformed_bodies_are_one_documented_422(lite, payload, needle):
    with client(lite) as c:
        r = c.post("/v1/rankings", content=payload, headers={"content-type": "application/json"})
        body = assert_problem(r, 422)
        assert needle in body["detail"] and "malformed JSON body" in body["detail"], body
        doc = c.get("/openapi.json").json()
    for path, op in [("/v1/rankings", "post"), ("/v1/distillations", "post"), ("/v1/datasets/demo", "post")]:
        responses = doc["paths"][path][op]["responses"]
        assert "422" in responses and "400" not in responses and "413" in responses
        assert "malformed" in responses["422"]["description"]
    lite.assert_alive()


def test_405_lists_every_method_of_the_path(lite):
    with client(lite) as c:
        r = c.put("/v1/jobs/job_x")
        assert_problem(r, 405)
        assert {"GET", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
        r = c.patch("/v1/teachers/tiny-0")
        assert_problem(r, 405)
        assert {"GET", "PUT", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
