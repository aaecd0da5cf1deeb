"""The HTTP API in-process (TestClient, SQLite, no worker): uploads, teachers, jobs and problem+json errors."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from svc_helpers import assert_problem, make_tiny_repo, npz_bytes, tiny_weights, toy_dataset, zip_bytes

from app.main import create_app
from hubscout.data import Dataset, write_image_folder_zip
from hubscout.scores import METRICS
from hubscout.teachers import Repository, build_model
from service.settings import Settings
from service.tables import DatasetRow, JobRow, TeacherRow

MAX_UPLOAD = 400_000


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api-repo") / "zoo"
    make_tiny_repo(root)
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory, tiny_repo) -> Settings:
    data = tmp_path_factory.mktemp("api-data")
    return Settings(data_dir=data, repository_dir=tiny_repo, build_demo_zoo=False, max_upload_bytes=MAX_UPLOAD,
                    max_teacher_upload_bytes=2_000_000, upload_chunk_bytes=8192)


@pytest.fixture(scope="module")
def client(settings):
    app = create_app(settings)

    @app.get("/v1/_boom", include_in_schema=False)
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        c.app_state = app.state
        yield c


def stored_files(settings: Settings) -> list[str]:
    root = settings.storage_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "health" not in p.parts)


def count(client, model) -> int:
    from sqlalchemy import func, select

    with client.app_state.services.db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


# ------------------------------------------------------------------------------------------------- basics

def test_health_and_docs(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    assert r.json()["mode"] == "embedded"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/datasets", "/v1/teachers", "/v1/rankings", "/v1/distillations", "/v1/jobs/{job_id}",
                 "/v1/rankings/{ranking_id}", "/v1/students/{student_id}/download", "/healthz"):
        assert path in spec["paths"], path
    assert "Problem" in spec["components"]["schemas"]
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"


def test_unexpected_error_is_a_problem_without_internals(client):
    body = assert_problem(client.get("/v1/_boom"), 500)
    assert "secret" not in json.dumps(body)


def test_unknown_routes_and_ids_are_404_problems(client):
    for url in ("/v1/nothing", "/v1/datasets/nope", "/v1/teachers/nope", "/v1/jobs/nope", "/v1/rankings/nope",
                "/v1/students/nope", "/v1/students/nope/download"):
        assert_problem(client.get(url), 404)
    assert_problem(client.delete("/v1/jobs/nope"), 404)
    assert_problem(client.delete("/v1/teachers/nope"), 404)
    assert_problem(client.put("/v1/datasets/x"), 405)


def test_the_web_page_and_its_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for name, ctype in (("app.js", "javascript"), ("charts.js", "javascript"), ("style.css", "text/css")):
        assert f"/static/{name}" in r.text
        f = client.get(f"/static/{name}")
        assert f.status_code == 200 and ctype in f.headers["content-type"], name
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/static/../app/main.py").status_code == 404


def test_info_is_public_and_tells_the_page_what_it_needs(client):
    info = client.get("/v1/info").json()
    assert info["auth_required"] is False  # no API key configured
    assert info["mode"] == "embedded" and info["max_upload_bytes"] == MAX_UPLOAD
    # The registry's names in registration order: the first five are v1's; the defaults, the first orders.
    assert info["metrics"] == list(METRICS) and info["metrics"][:5] == ["ot", "leep", "nce", "hscore", "logme"]
    from hubscout.scores import DEFAULT_METRICS

    assert info["default_metrics"] == list(DEFAULT_METRICS) and "ot" in info["default_metrics"]
    assert info["repository"]["state"] == "ready"  # the folder was there: nothing to build


# ------------------------------------------------------------------------------------------------- datasets

def test_demo_targets_make_datasets_like_uploads(client, settings):
    from hubscout.data import load_dataset
    from hubscout.sources import TARGETS, demo_target

    targets = {t["name"]: t for t in client.get("/v1/demo-targets").json()}
    assert set(targets) == set(TARGETS)
    assert targets["footwear"]["classes"] == ["sandal", "sneaker", "ankle-boot"]

    r = client.post("/v1/datasets/demo", json={"name": "footwear", "shots": 4, "seed": 7})
    assert r.status_code == 201, r.text
    body = r.json()
    expected = demo_target("footwear", 4, seed=7)
    assert body["sha256"] == expected.sha256 and body["name"] == "footwear-4shot-s7"
    assert body["n_samples"] == 12 and body["class_counts"] == {"sandal": 4, "sneaker": 4, "ankle-boot": 4}
    assert r.headers["location"] == f"/v1/datasets/{body['id']}"
    stored = load_dataset(settings.storage_root / "datasets" / f"{body['id']}.npz")
    assert np.array_equal(stored.images, expected.images) and np.array_equal(stored.labels, expected.labels)
    # The same content asked for again is the same dataset; uploaded as a file it keeps the file's name (the
    # request's), sharing the stored content.
    again = client.post("/v1/datasets/demo", json={"name": "footwear", "shots": 4, "seed": 7})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    files = stored_files(settings)
    upload = client.post("/v1/datasets", files={"file": ("f.npz", npz_bytes(expected))})
    assert upload.status_code == 201 and upload.json()["name"] == "f" and upload.json()["sha256"] == body["sha256"]
    assert upload.json()["id"] != body["id"] and stored_files(settings) == files
    assert client.get(f"/v1/datasets/{body['id']}").json()["name"] == "footwear-4shot-s7"


@pytest.mark.parametrize("body, status, needle", [
    ({"name": "nope", "shots": 4}, 422, "known: footwear"),
    ({"name": "footwear", "shots": 0}, 422, "shots"),
    ({"name": "footwear", "shots": 7000}, 422, "only 6000"),
    ({"name": "footwear", "shots": 10**6}, 422, "more than the 200000 samples"),
    ({"name": "footwear", "shots": 4, "colour": "red"}, 422, "colour"),
])
def test_bad_demo_requests_are_problems_and_store_nothing(client, settings, body, status, needle):
    before = count(client, DatasetRow)
    problem = assert_problem(client.post("/v1/datasets/demo", json=body), status)
    assert needle in json.dumps(problem)
    assert count(client, DatasetRow) == before
    assert_problem(client.post("/v1/datasets/demo", content=b"name=footwear"), 415)


def test_upload_npz_then_get(client):
    ds = toy_dataset()
    r = client.post("/v1/datasets", files={"file": ("toy.npz", npz_bytes(ds))})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["sha256"] == ds.sha256
    assert body["n_samples"] == 12 and body["num_classes"] == 3
    assert body["classes"] == ["ant", "bee", "cow"]
    assert body["class_counts"] == {"ant": 4, "bee": 4, "cow": 4}
    assert body["image_shape"] == [16, 16, 1]
    assert body["name"] == "toy"
    assert client.get(f"/v1/datasets/{body['id']}").json() == body


def test_same_content_is_stored_once(client, settings, tmp_path):
    ds = toy_dataset(seed=1)
    zipped = write_image_folder_zip(ds, tmp_path / "a.zip").read_bytes()
    first = client.post("/v1/datasets", files={"file": ("a.zip", zipped)}, data={"name": "first"})
    assert first.status_code == 201, first.text
    files = stored_files(settings)
    # The same images zipped again, entries in another order, under another name: the content is stored once,
    # the name is the request's (a dataset row of its own).
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        members = {n: zf.read(n) for n in reversed(zf.namelist())}
    again = client.post("/v1/datasets", files={"file": ("b.zip", zip_bytes(members))})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"] and again.json()["sha256"] == first.json()["sha256"]
    assert again.json()["name"] == "b"
    assert client.get(f"/v1/datasets/{first.json()['id']}").json()["name"] == "first"
    assert stored_files(settings) == files
    # The same content under the same name again: that dataset.
    third = client.post("/v1/datasets", files={"file": ("c.zip", zipped)}, data={"name": "first"})
    assert third.status_code == 200 and third.json()["id"] == first.json()["id"]


def _png(side: int = 8, mode: str = "L", value: int = 128, size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size or (side, side), value if mode == "L" else (value, 255 - value, 7)).save(buf, "PNG")
    return buf.getvalue()


def _zip_with(members: dict[str, bytes], extra: list[zipfile.ZipInfo] = (), extra_data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in extra:
            zf.writestr(info, extra_data)
    return buf.getvalue()


def _symlink_entry(name: str) -> zipfile.ZipInfo:
    import stat

    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the mode bits below mean what they say
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _bomb() -> bytes:
    # 30 MB of zeros deflate to ~30 KB: a 1000x expansion, far past the 200x a real image folder shows.
    return zip_bytes({"ant/1.png": _png(), "bee/1.png": _png(), "cow/huge.png": b"\0" * 30_000_000})


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


GOOD = {"ant/1.png": _png(value=1), "bee/1.png": _png(value=2)}
EMPTY_CLASS = zipfile.ZipInfo("cow/")

BAD_DATASETS = {
    # name: (payload, status, words the detail must hold)
    "parent path": (zip_bytes({**GOOD, "../evil/1.png": _png()}), 422, ["unsafe path"]),
    "absolute path": (zip_bytes({**GOOD, "/abs/1.png": _png()}), 422, ["unsafe path", "/abs/1.png"]),
    "zip bomb": (_bomb(), 422, ["zip bomb"]),
    "nested archive": (zip_bytes({**GOOD, "ant/inner.zip": b"PK"}), 422, ["nested archives"]),
    "symlink": (_zip_with(GOOD, [_symlink_entry("ant/link.png")], b"/etc/passwd"), 422, ["symbolic link"]),
    "truncated image": (zip_bytes({**GOOD, "ant/2.png": _png(side=32)[:60]}), 422, ["ant/2.png", "not a readable"]),
    "corrupt image": (zip_bytes({"ant/1.png": b"not an image", "bee/2.png": b"nope"}), 422, ["not a readable image"]),
    "non-image file": (zip_bytes({**GOOD, "ant/notes.txt": b"hello"}), 422, ["notes.txt", "not an image"]),
    "not an archive": (b"not a zip at all", 422, ["unreadable archive"]),
    "file outside a class folder": (zip_bytes({"loose.png": b"x"}), 422, ["class folder"]),
    "single class": (zip_bytes({"ant/1.png": _png(value=1), "ant/2.png": _png(value=2)}), 422,
                     ["at least 2 classes"]),
    "empty class": (_zip_with(GOOD, [EMPTY_CLASS]), 422, ["no image", "cow"]),
    "pickled npz": (_npz(images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]),
                         classes=np.array([{"x": 1}, "b"], dtype=object)), 422, ["object arrays are refused"]),
    # 10^5 classes of one 1x1 image each: small on the wire, far past max_classes.
    "100000 tiny classes": (_npz(images=np.zeros((100_000, 1, 1), np.uint8),
                                 labels=np.arange(100_000, dtype=np.int32)), 413, ["100000 classes", "limit"]),
    # One sample more than max_samples (200000), 1x1 pixel each; random labels, which no archive squeezes like
    # a bomb.
    "too many samples": (_npz(images=np.zeros((200_001, 1, 1), np.uint8),
                              labels=np.random.default_rng(0).integers(0, 2, 200_001)), 413,
                         ["200001 samples", "limit"]),
}
LIMIT_OF = {"100000 tiny classes": "max_classes", "too many samples": "max_samples"}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_dataset_is_a_4xx_problem_and_nothing_is_stored(client, settings, case):
    payload, status, words = BAD_DATASETS[case]
    assert len(payload) < MAX_UPLOAD, "the case must reach the parser, not the upload limit"
    before_files, before_rows = stored_files(settings), count(client, DatasetRow)
    body = assert_problem(client.post("/v1/datasets", files={"file": ("data.zip", payload)}), status)
    for word in words:
        assert word in body["detail"], body
    if status == 413:
        assert body["limit"] == getattr(settings, LIMIT_OF[case])
    assert stored_files(settings) == before_files
    assert count(client, DatasetRow) == before_rows


def test_mixed_image_modes_and_sizes_are_normalised(client):
    """Not an error: grey, RGB and palette images of several sizes become one RGB shape (the most common size)."""
    from PIL import Image

    pal = io.BytesIO()
    Image.new("P", (12, 12), 3).save(pal, "PNG")
    members = {"ant/1.png": _png(12, "L"), "ant/2.png": _png(12, "RGB"), "bee/1.png": pal.getvalue(),
               "bee/2.png": _png(size=(20, 9), mode="RGB"), "cow/1.png": _png(12, "L", 9)}
    r = client.post("/v1/datasets", files={"file": ("mixed.zip", zip_bytes(members))})
    assert r.status_code == 201, r.text
    assert r.json()["image_shape"] == [12, 12, 3]
    assert r.json()["class_counts"] == {"ant": 2, "bee": 2, "cow": 1}


def test_npz_with_one_class_is_refused(client):
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    body = assert_problem(client.post("/v1/datasets", files={"file": ("one.npz", buf.getvalue())}), 422)
    assert "at least 2 classes" in body["detail"]


def test_oversize_upload_is_413_as_soon_as_the_limit_passes(client, settings):
    before = stored_files(settings)
    big = b"\0" * (MAX_UPLOAD + 1)
    body = assert_problem(client.post("/v1/datasets", files={"file": ("big.npz", big)}), 413)
    assert body["limit"] == MAX_UPLOAD
    assert stored_files(settings) == before



def test_streamed_upload_stops_at_the_limit(tmp_path):
    """The parser pulls the body chunk by chunk and gives up at the first chunk past the limit."""
    import asyncio

    from starlette.requests import Request

    from app.problems import Problem
    from service.storage import LocalStorage
    from app.uploads import read_multipart

    boundary, chunk, limit = "b0undary", 16384, 100_000
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.npz\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    pulled = []

    async def receive():
        pulled.append(1)
        if len(pulled) == 1:
            return {"type": "http.request", "body": head, "more_body": True}
        return {"type": "http.request", "body": b"\1" * chunk, "more_body": len(pulled) < 1000}

    scope = {"type": "http", "method": "POST", "path": "/v1/datasets", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    storage = LocalStorage(tmp_path)
    with pytest.raises(Problem) as err:
        asyncio.run(read_multipart(Request(scope, receive), storage, file_limits={"file": limit}, text_fields=set(),
                                   max_field_bytes=1024, chunk_bytes=8192))
    assert err.value.status == 413
    assert len(pulled) == 2 + limit // chunk, "read past the first chunk over the limit"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a partial upload was left in storage"


def test_declared_oversize_body_is_refused_before_reading(client):
    r = client.post("/v1/datasets", content=b"x", headers={
        "content-type": "multipart/form-data; boundary=x", "content-length": str(50 * MAX_UPLOAD)})
    assert_problem(r, 413)


def test_upload_needs_multipart_and_a_file_part(client, settings):
    before_files, before_rows = stored_files(settings), count(client, DatasetRow)
    assert_problem(client.post("/v1/datasets", json={"file": "x"}), 415)
    assert_problem(client.post("/v1/datasets", content=npz_bytes(toy_dataset()),
                               headers={"content-type": "application/octet-stream"}), 415)
    body = assert_problem(client.post("/v1/datasets", files={"other": ("x.npz", b"PK")}), 422)
    assert "'file'" in body["detail"]
    body = assert_problem(client.post("/v1/datasets", content=b"--x\r\ngarbage",
                                      headers={"content-type": "multipart/form-data; boundary=x"}), 422)
    assert stored_files(settings) == before_files
    assert count(client, DatasetRow) == before_rows


# ------------------------------------------------------------------------------------------------- teachers

def test_teachers_are_listed_with_pagination(client):
    r = client.get("/v1/teachers", params={"limit": 2})
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [t["id"] for t in page["items"]] == ["tiny-0", "tiny-1"]
    rest = client.get("/v1/teachers", params={"limit": 2, "offset": 2}).json()
    assert [t["id"] for t in rest["items"]] == ["tiny-2"]
    one = client.get("/v1/teachers/tiny-1").json()
    assert one["labels"] == ["x", "y", "z"] and one["input"]["size"] == 32
    assert client.get("/v1/teachers", params={"name": "tiny 2"}).json()["total"] == 1
    assert_problem(client.get("/v1/teachers", params={"limit": 0}), 422)
    # Keyset pagination: the cursor is the last id of a page; null on the last page.
    assert page["next_after"] == "tiny-1" and rest["next_after"] is None
    after = client.get("/v1/teachers", params={"limit": 2, "after": page["next_after"]}).json()
    assert [t["id"] for t in after["items"]] == ["tiny-2"] and after["next_after"] is None
    # These folders came without spec.npz, and no worker runs here: their specifications wait for one.
    assert {t["spec"]["status"] for t in page["items"]} == {"pending"}
    assert client.get("/v1/teachers", params={"spec_status": "pending"}).json()["total"] == 3
    assert client.get("/v1/teachers", params={"spec_status": "ready"}).json()["total"] == 0
    assert_problem(client.get("/v1/teachers", params={"spec_status": "nonsense"}), 422)


def _teacher_form(**over):
    fields = {"arch": "test_resnet", "name": "Uploaded teacher", "labels": json.dumps(["p", "q", "r"]),
              "input": json.dumps({"size": 32, "channels": 1, "mean": [0.5], "std": [0.5]}),
              "metadata": json.dumps({"task": "testing"})}
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def test_add_and_delete_a_teacher(client, settings):
    r = client.post("/v1/teachers", data=_teacher_form(), files={"weights": ("w.safetensors", tiny_weights())})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["id"] == "uploaded-teacher" and t["num_classes"] == 3 and t["metadata"] == {"task": "testing"}
    # Computed by a worker, not in the request.
    assert t["spec"]["status"] == "pending" and t["spec"]["source"] is None
    assert r.headers["location"] == "/v1/teachers/uploaded-teacher"
    assert "uploaded-teacher" in Repository(settings.repository_dir)
    assert client.get("/v1/teachers").json()["total"] == 4
    dup = client.post("/v1/teachers", data=_teacher_form(), files={"weights": ("w.safetensors", tiny_weights())})
    assert_problem(dup, 409)
    assert client.delete("/v1/teachers/uploaded-teacher").status_code == 204
    assert "uploaded-teacher" not in Repository(settings.repository_dir)
    assert_problem(client.get("/v1/teachers/uploaded-teacher"), 404)


def _poisoned_weights(value: float) -> bytes:
    """A valid state dict for the form's architecture with one weight set to ``value`` (NaN, Inf)."""
    from safetensors.torch import load, save

    state = load(tiny_weights())
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    return save(state)


def _torch_pickle() -> bytes:
    buf = io.BytesIO()
    torch.save(build_model("test_resnet", 3, 1).state_dict(), buf)  # a zip holding a pickle
    return buf.getvalue()


@pytest.mark.parametrize("form, weights, needle", [
    # the label file does not match the head: 2 labels, 3 outputs
    (_teacher_form(labels=json.dumps(["p", "q"])), tiny_weights(), "do not fit"),
    # a safetensors file for another architecture
    (_teacher_form(arch="resnet18"), tiny_weights(), "do not fit resnet18"),
    (_teacher_form(arch="no_such_net"), tiny_weights(), "unknown timm architecture"),
    (_teacher_form(), b"\x80\x04pickle", "safetensors"),
    (_teacher_form(), _torch_pickle(), "safetensors"),
    (_teacher_form(), _poisoned_weights(float("nan")), "NaN or Inf"),
    (_teacher_form(), _poisoned_weights(float("inf")), "NaN or Inf"),
    (_teacher_form(), _poisoned_weights(float("-inf")), "NaN or Inf"),
    (_teacher_form(arch_kwargs=json.dumps({"checkpoint_path": "/etc/passwd"})), tiny_weights(), "checkpoint_path"),
    (_teacher_form(input="{not json"), tiny_weights(), "input"),
    (_teacher_form(input=json.dumps({"size": 32, "channels": 1, "mean": [0.5, 0.5], "std": [0.5]})),
     tiny_weights(), "mean/std"),
    (_teacher_form(labels=None), tiny_weights(), "labels"),
    (_teacher_form(id="../escape"), tiny_weights(), "id"),
])
def test_bad_teacher_is_a_422_problem_and_nothing_is_added(client, settings, form, weights, needle):
    before = sorted(p.name for p in Path(settings.repository_dir).iterdir())
    scratch_before = stored_files(settings)
    r = client.post("/v1/teachers", data=form, files={"weights": ("w.safetensors", weights)})
    body = assert_problem(r, 422)
    assert needle in body["detail"], body
    assert sorted(p.name for p in Path(settings.repository_dir).iterdir()) == before
    assert count(client, TeacherRow) == 3
    assert stored_files(settings) == scratch_before, "the uploaded weights were left in storage"


def test_a_spec_sample_is_kept_beside_the_teacher_and_a_bad_one_refused(client, settings):
    from hubscout.data import load_dataset
    from hubscout.spec import SPEC_SAMPLE_FILE

    rng = np.random.default_rng(5)
    sample = Dataset(rng.integers(0, 255, (140, 16, 16, 1), dtype=np.uint8), np.arange(140) % 2, ["q", "r"])
    r = client.post("/v1/teachers", data=_teacher_form(name="with sample"),
                    files={"weights": ("w.safetensors", tiny_weights()), "spec_sample": ("s.npz", npz_bytes(sample))})
    assert r.status_code == 201, r.text
    try:
        kept = load_dataset(Path(settings.repository_dir) / "with-sample" / SPEC_SAMPLE_FILE)
        assert kept.classes == ["q", "r"] and kept.class_counts() == {"q": 50, "r": 50}  # cut to 50 a class
        assert r.json()["spec"]["status"] == "pending"
    finally:
        assert client.delete("/v1/teachers/with-sample").status_code == 204

    before = sorted(p.name for p in Path(settings.repository_dir).iterdir())
    alien = Dataset(sample.images[:4], np.array([0, 1, 0, 1]), ["q", "zebra"])
    for payload, needle in [(npz_bytes(alien), "zebra"), (b"not a dataset", "spec_sample")]:
        r = client.post("/v1/teachers", data=_teacher_form(name="bad sample"),
                        files={"weights": ("w.safetensors", tiny_weights()), "spec_sample": ("s.npz", payload)})
        assert needle in assert_problem(r, 422)["detail"]
    assert sorted(p.name for p in Path(settings.repository_dir).iterdir()) == before
    assert count(client, TeacherRow) == 3


# ------------------------------------------------------------------------------------------------- jobs

@pytest.fixture(scope="module")
def dataset_id(client) -> str:
    r = client.post("/v1/datasets", files={"file": ("jobs.npz", npz_bytes(toy_dataset(seed=7)))})
    return r.json()["id"]


def test_ranking_request_validation(client, dataset_id):
    jobs_before = count(client, JobRow)
    for body, status, needle in [
        ({"dataset_id": dataset_id, "metrics": ["nope"]}, 422, "unknown metric"),
        ({"dataset_id": dataset_id, "top_k": 0}, 422, "top_k"),
        ({"dataset_id": dataset_id, "shortlist": -1}, 422, "shortlist"),
        ({"dataset_id": dataset_id, "shortlist": "many"}, 422, "shortlist"),
        ({"dataset_id": dataset_id, "surprise": 1}, 422, "surprise"),
        ({"dataset_id": "missing"}, 422, "does not exist"),
        ({"dataset_id": dataset_id, "teacher_ids": ["tiny-0", "ghost"]}, 422, "ghost"),
        ({}, 422, "dataset_id"),
    ]:
        assert needle in assert_problem(client.post("/v1/rankings", json=body), status)["detail"]
    r = client.post("/v1/rankings", content=b'{"dataset_id": ', headers={"content-type": "application/json"})
    assert "malformed JSON" in assert_problem(r, 422)["detail"]
    r = client.post("/v1/rankings", content=f'{{"dataset_id": "{dataset_id}"}}', headers={"content-type": "text/plain"})
    assert "application/json" in assert_problem(r, 415)["detail"]
    assert_problem(client.post("/v1/distillations", data={"dataset_id": dataset_id}), 415)
    r = client.post("/v1/distillations", content=b'{"dataset_id": [}', headers={"content-type": "application/json"})
    assert "malformed JSON" in assert_problem(r, 422)["detail"]
    assert count(client, JobRow) == jobs_before, "a refused request left a job behind"


def test_distillation_request_validation(client, dataset_id, settings):
    for body, needle in [
        ({"dataset_id": dataset_id, "teacher_ids": []}, "at least one teacher"),
        ({"dataset_id": dataset_id, "teacher_ids": ["tiny-0"], "student_arch": "no_such_net"}, "student_arch"),
        ({"dataset_id": dataset_id, "teacher_ids": ["tiny-0"], "epochs": settings.max_epochs + 1}, "epochs"),
        ({"dataset_id": dataset_id, "teacher_ids": ["tiny-0"], "tau": 0}, "tau"),
        ({"dataset_id": dataset_id, "teacher_ids": ["tiny-0", "tiny-0"]}, "twice"),
    ]:
        assert needle in assert_problem(client.post("/v1/distillations", json=body), 422)["detail"]


def test_distillation_student_and_schedule_at_submission(client, dataset_id, settings):
    jobs_before = count(client, JobRow)
    # A fixed-size model on 16-px images: refused now with the reason, not failed in the worker.
    r = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-0"],
                                               "student_arch": "vit_tiny_patch16_224"})
    detail = assert_problem(r, 422)["detail"]
    assert "cannot take this dataset's 1×32×32 input" in detail and "224" in detail
    for body, needle in [({"lam": 1000}, "lam"), ({"tau": 0.01}, "tau"), ({"reg": 0}, "reg"), ({"reg": 50}, "reg"),
                         ({"student_arch": "tiny", "epochs": 0}, "epochs")]:
        r = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-0"], **body})
        assert needle in assert_problem(r, 422)["detail"]
    assert count(client, JobRow) == jobs_before, "a refused request left a job behind"

    teacher = client.get("/v1/teachers/tiny-0").json()
    job = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-0"]}).json()
    chosen = job["params"]["student"]
    assert job["params"]["config"]["student_arch"] == "auto"
    assert chosen["params"] <= teacher["num_params"] and chosen["params"] <= 5_000_000
    assert not chosen["larger_than_teachers"] and chosen["size"] in {z["name"] for z in client.get("/v1/info").json()["student_sizes"]}
    bigger = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-0"],
                                                    "student_arch": "medium"}).json()
    assert bigger["params"]["student"]["larger_than_teachers"]  # offered, and said
    # Whatever epochs and min_steps ask, the server's epoch cap goes with the job.
    odd = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-0"], "epochs": 1,
                                                 "min_steps": 100_000}).json()
    assert odd["params"]["config"]["max_epochs"] == settings.max_epochs
    for j in (job, bigger, odd):
        assert client.delete(f"/v1/jobs/{j['id']}").status_code == 200


def test_info_lists_students_by_size(client):
    info = client.get("/v1/info").json()
    params = [z["params"] for z in info["student_sizes"]]
    assert len(params) >= 4 and params == sorted(params) and params[-1] <= 5_000_000
    assert "auto" in info["default_student"]


def test_callback_needs_a_webhook_secret_on_the_server(client, dataset_id, settings):
    assert settings.webhook_secret is None
    for path, extra in (("/v1/rankings", {}), ("/v1/distillations", {"teacher_ids": ["tiny-0"]})):
        r = client.post(path, json={"dataset_id": dataset_id, "callback_url": "https://example.org/hook", **extra})
        assert "HUBSCOUT_WEBHOOK_SECRET" in assert_problem(r, 422)["detail"]


def test_jobs_are_queued_listed_and_cancelled(client, dataset_id):
    r = client.post("/v1/rankings", json={"dataset_id": dataset_id, "metrics": "all", "top_k": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "ranking" and job["progress"] == 0
    assert job["params"]["metrics"] == list(METRICS)  # "all" expanded to every registered metric
    # Not said: the service's default shortlist; null or 0: exhaustive.
    assert job["params"]["shortlist"] == 10
    for asked, stored in [(None, None), (0, None), (3, 3)]:
        other = client.post("/v1/rankings", json={"dataset_id": dataset_id, "shortlist": asked}).json()
        assert other["params"]["shortlist"] == stored
        assert client.delete(f"/v1/jobs/{other['id']}").status_code == 200
    d = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-1"], "epochs": 2})
    assert d.status_code == 202, d.text
    assert d.json()["params"]["config"]["epochs"] == 2

    page = client.get("/v1/jobs", params={"limit": 1}).json()
    assert page["total"] >= 2 and len(page["items"]) == 1
    assert page["items"][0]["id"] == d.json()["id"]  # newest first
    assert client.get("/v1/jobs", params={"kind": "distillation"}).json()["total"] >= 1

    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert count(client, JobRow) >= 2


def test_healthz_names_the_failing_dependency(tmp_path, tiny_repo):
    # Nothing listens on port 1: the broker check must fail, the others pass.
    s = Settings(data_dir=tmp_path, repository_dir=tiny_repo, build_demo_zoo=False,
                 celery_broker_url="redis://127.0.0.1:1/0", api_keys=["health-test-key-0123456789"])
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        body = assert_problem(c.get("/healthz"), 503)
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"


def test_no_client_supplied_name_becomes_a_path(client, settings):
    """A file name and a display name that try to climb out of storage are display text only; ids in URLs are
    looked up, never joined to a folder."""
    evil = "../../../../tmp/hubscout-escape"
    r = client.post("/v1/datasets", files={"file": (f"{evil}.npz", npz_bytes(toy_dataset(seed=21)))},
                    data={"name": "../../name\x00with\x1fcontrols"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "../../namewithcontrols"
    stored = [p for p in stored_files(settings) if r.json()["id"] in p]
    assert stored == [f"datasets/{r.json()['id']}.npz"]
    assert not Path("/tmp/hubscout-escape.npz").exists()
    for url in ("/v1/students/..%2F..%2Fhubscout.db/download", "/v1/students/%2Fetc%2Fpasswd/download",
                "/v1/datasets/..%2Fhubscout.db"):
        assert client.get(url).status_code == 404, url


def test_a_queued_job_says_what_runs_and_waits_ahead_and_jobs_report_real_time(client, dataset_id):
    import datetime as dt

    from sqlalchemy import update

    first = client.post("/v1/rankings", json={"dataset_id": dataset_id}).json()
    second = client.post("/v1/rankings", json={"dataset_id": dataset_id}).json()
    running = client.post("/v1/distillations", json={"dataset_id": dataset_id, "teacher_ids": ["tiny-1"]}).json()
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)
    with client.app_state.services.db.session() as s:  # as a worker's claim leaves it, 40 % done
        s.execute(update(JobRow).where(JobRow.id == running["id"])
                  .values(status="running", progress=0.4, started_at=started, attempts=1, worker="test-worker:1",
                          heartbeat_at=dt.datetime.now(dt.timezone.utc)))
        s.commit()
    try:
        q1, q2 = (client.get(f"/v1/jobs/{j['id']}").json() for j in (first, second))
        assert q2["queue"]["position"] == q1["queue"]["position"] + 1
        assert q2["queue"]["queued_ahead"] == q1["queue"]["queued_ahead"] + 1
        assert first["id"] in [a["id"] for a in q2["queue"]["ahead"]]
        assert {"kind": "distillation", "status": "running", "progress": 0.4, "id": running["id"]} \
            in q1["queue"]["running"]
        assert q1["computing_s"] is None and q1["queued_s"] >= 0
        listed = {j["id"]: j for j in client.get("/v1/jobs", params={"status": "queued"}).json()["items"]}
        assert listed[second["id"]]["queue"]["position"] == q2["queue"]["position"]
        r = client.get(f"/v1/jobs/{running['id']}").json()
        assert r["queue"] is None and 29 <= r["computing_s"] < 120
        assert r["progress"] == 0.4
    finally:
        for j in (first, second, running):
            client.delete(f"/v1/jobs/{j['id']}")
    done = client.get(f"/v1/jobs/{first['id']}").json()
    assert done["status"] == "cancelled" and done["queue"] is None and done["computing_s"] is None
    assert done["queued_s"] == client.get(f"/v1/jobs/{first['id']}").json()["queued_s"]  # stopped counting


def test_progress_is_stored_rounded(client, dataset_id, settings):
    from service import jobs

    job = client.post("/v1/rankings", json={"dataset_id": dataset_id}).json()
    db = client.app_state.services.db
    claim = jobs.claim(db, settings, job["id"], "test-worker:1")
    try:
        jobs.progress(db, claim, 0.1 + 0.2 + 0.059, "scoring")  # 0.35899999999999993 in floats
        assert client.get(f"/v1/jobs/{job['id']}").json()["progress"] == 0.359
    finally:
        client.delete(f"/v1/jobs/{job['id']}")


def test_docs_load_their_assets_from_the_service_not_a_cdn(client):
    import re

    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        for name in assets:
            url = next(u for u in urls if u.endswith(name))
            r = client.get(url)
            assert r.status_code == 200 and len(r.content) > 10_000, url


def test_openapi_schemas_are_typed_described_and_have_examples(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    teacher = schemas["RankedTeacher"]
    assert "additionalProperties" not in teacher
    assert {"forward_s", "score_s", "cached", "correspondences", "matches"} <= set(teacher["properties"])
    pair = teacher["properties"]["correspondences"]["additionalProperties"]["items"]
    assert [p["type"] for p in pair["prefixItems"]] == ["string", "number"]
    ranking = schemas["RankingOut"]
    assert "additionalProperties" not in ranking
    assert {"cost", "shortlist"} <= set(ranking["properties"])
    assert "Shortlist" in json.dumps(ranking["properties"]["shortlist"])
    metric_items = json.dumps(schemas["RankingCreate"]["properties"]["metrics"])
    for m in (*METRICS, "all"):
        assert f'"{m}"' in metric_items
    props = {**schemas["RankingCreate"]["properties"], **schemas["DistillationCreate"]["properties"]}
    for field in ("lam", "tau", "epochs", "top_k"):
        assert props[field].get("description"), field
    for name in ("RankingCreate", "DistillationCreate", "DatasetOut"):
        assert schemas[name].get("examples"), name
    assert "position" in schemas["QueueInfo"]["properties"]
    assert {"queued_s", "computing_s", "queue"} <= set(schemas["JobOut"]["properties"])
