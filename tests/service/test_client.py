"""hubscout.client.Client against the real embedded server (uvicorn, SQLite, the local Celery worker)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from svc_helpers import Receiver, free_port

from hubscout.client import Client, ClientError, JobFailed

STUDENT = {"student_arch": "test_resnet", "epochs": 3, "min_steps": 0}


@pytest.fixture(scope="module")
def target():
    """A dataset of its own (8 shots, seed 3): the other service tests see their own datasets' caches untouched."""
    from hubscout.sources import demo_target

    return demo_target("footwear", 8, seed=3)


@pytest.fixture(scope="module")
def hs(embedded_service):
    with Client(embedded_service.base_url, poll_interval=0.1) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(hs, target, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("client") / "footwear.npz"
    target.save(path)
    return hs.upload(path)


def test_upload_a_file_or_a_dataset(hs, uploaded, target):
    assert uploaded["sha256"] == target.sha256 and uploaded["n_samples"] == 24 and uploaded["name"] == "footwear"
    again = hs.upload(target, name="in memory")
    assert again["sha256"] == uploaded["sha256"] and again["name"] == "in memory"  # same content, the request's name
    assert hs.upload(target, name="footwear")["id"] == uploaded["id"]  # same content and name: same dataset
    assert hs.dataset(uploaded["id"]) == uploaded


def test_teachers_are_the_servers_repository(hs, quick_repo):
    teachers = hs.teachers(page_size=2)  # several pages
    assert sorted(t["id"] for t in teachers) == sorted(quick_repo.ids())
    assert hs.teacher("fashion-footwear")["labels"] == quick_repo.get("fashion-footwear").labels


def test_rank_wait_with_a_progress_bar_then_read_the_ranking(hs, uploaded, capsys):
    job = hs.rank(uploaded, metrics=["ot", "leep"], teachers=["fashion-footwear", "mnist-digits", "animals-all"],
                  top_k=2)
    assert job["status"] == "queued" and job["kind"] == "ranking"
    done = hs.wait(job, progress=True, timeout=300)
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    # stderr is not a terminal here: plain lines, the queue place while queued, the real time at the end.
    lines = capsys.readouterr().err
    assert "\r" not in lines and "\x1b[" not in lines
    last = lines.strip().splitlines()[-1]
    assert last.startswith("ranking succeeded") and "computed" in last and "100/100 % (100%)" in last
    ranking = hs.ranking(done["result_id"])
    assert ranking["job_id"] == done["id"] and ranking["dataset_id"] == uploaded["id"]
    assert ranking["metrics"] == ["ot", "leep"] and len(ranking["teachers"]) == 2
    assert ranking["teachers"][0]["teacher_id"] == "fashion-footwear"  # trained on these very classes


def test_distill_wait_and_download_a_student_with_its_onnx_copy(hs, uploaded, footwear_test, tmp_path):
    import onnxruntime as ort

    from hubscout.data import iter_batches
    from hubscout.distill import load_student

    job = hs.wait(hs.distill(uploaded["id"], ["fashion-footwear"], **STUDENT), progress=False, timeout=600)
    info = hs.student(job["result_id"])
    assert info["student_arch"] == "test_resnet" and info["teacher_ids"] == ["fashion-footwear"]

    folder = hs.download(job["result_id"], tmp_path / "student")
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "labels.json", "model.onnx",
            "MODEL_CARD.md", "predict.py"} == names
    student = load_student(folder)
    assert json.loads((folder / "metrics.json").read_text())["train_accuracy"] == info["metrics"]["train_accuracy"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert uploaded["sha256"] in card and "fashion-footwear" in card

    # The server's ONNX export predicts what the torch student predicts, on real held-out images.
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_pred = np.concatenate([session.run(None, {"input": x.numpy()})[0].argmax(1)
                                for x in iter_batches(footwear_test.images, student.input, 100)])
    assert (onnx_pred == student.predict(footwear_test)).all()

    archive = hs.download(job["result_id"], tmp_path / "student.zip")
    with zipfile.ZipFile(archive) as zf:
        assert set(zf.namelist()) == names


def test_a_cancelled_job_makes_wait_raise(hs, uploaded):
    job = hs.distill(uploaded["id"], ["fashion-footwear"], student_arch="test_resnet", epochs=200)
    hs.cancel(job)
    with pytest.raises(JobFailed) as e:
        hs.wait(job, progress=False, timeout=60)
    assert e.value.job["status"] == "cancelled" and "cancelled" in str(e.value)
    assert hs.wait(job, progress=False, raise_on_failure=False)["status"] == "cancelled"


def test_errors_carry_the_problem_details(hs, uploaded, tmp_path):
    with pytest.raises(ClientError) as e:
        hs.job("job_nope")
    assert e.value.status == 404 and e.value.title == "Job not found" and "job_nope" in e.value.detail
    assert e.value.problem["instance"] == "/v1/jobs/job_nope" and e.value.type.endswith("/not-found")

    with pytest.raises(ClientError) as e:
        hs.rank("ds_missing")
    assert e.value.status == 422 and "does not exist" in e.value.detail

    with pytest.raises(ClientError) as e:
        hs.distill(uploaded, ["fashion-footwear"], epochs=0)
    assert e.value.status == 422 and "epochs" in e.value.detail

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ClientError) as e:
        hs.upload(junk)
    assert e.value.status == 422 and e.value.type.endswith("/invalid-dataset")

    with pytest.raises(ClientError) as e:
        hs.download("job_nope", tmp_path / "nothing")
    assert e.value.status == 404 and not (tmp_path / "nothing").exists()

    with Client(f"http://127.0.0.1:{free_port()}") as nobody, pytest.raises(ClientError) as e:
        nobody.teachers()
    assert e.value.status is None and "cannot reach" in str(e.value)


def test_the_api_key_is_sent_as_a_bearer_token():
    # A plain HTTP endpoint shows what goes over the wire; it answers 200 with no body, which is no API answer.
    with Receiver() as rx, Client(rx.url.rsplit("/", 1)[0], api_key="k-123") as c:
        with pytest.raises(ClientError, match="did not return JSON"):
            c.rank("ds_x")
        (call,) = rx.requests
    assert call.headers["authorization"] == "Bearer k-123"
    assert json.loads(call.body) == {"dataset_id": "ds_x"}  # no metric named: the server's defaults
