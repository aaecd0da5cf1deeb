"""`hubscout rank|distill|teachers list --server URL` against the real embedded server, through typer's runner."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from svc_helpers import free_port

from hubscout.cli import EXIT_INPUT, EXIT_JOB_FAILED, EXIT_REJECTED, EXIT_UNREACHABLE, app

runner = CliRunner()
TEACHERS = "fashion-footwear,fashion-clothes"


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def target_zip(tmp_path_factory):
    """A dataset of its own (7 shots, seed 4), so no other service test finds its outputs cached."""
    path = tmp_path_factory.mktemp("cli-server") / "footwear.zip"
    res = invoke("data", "demo-target", "footwear", "--shots", 7, "--seed", 4, "--out", path)
    assert res.exit_code == 0, res.output
    return path


def test_rank_on_the_server_prints_what_a_local_rank_prints(embedded_service, quick_repo, target_zip):
    common = ["rank", target_zip, "--metric", "ot,leep", "--teachers", TEACHERS, "--json"]
    remote = invoke(*common, "--server", embedded_service.base_url)
    assert remote.exit_code == 0, remote.output
    local = invoke(*common, "--repo", quick_repo.root)
    assert local.exit_code == 0, local.output
    r, l_ = json.loads(remote.stdout), json.loads(local.stdout)
    assert r["job_id"] and r["dataset_id"]  # the server's ids around the library's JSON
    for key in ("dataset_sha256", "classes", "n_samples", "metrics", "primary", "directions", "cost"):
        assert r[key] == l_[key], key
    assert [t["teacher_id"] for t in r["teachers"]] == [t["teacher_id"] for t in l_["teachers"]]
    for rt, lt in zip(r["teachers"], l_["teachers"]):
        for m in ("ot", "leep"):
            assert rt["scores"][m]["value"] == pytest.approx(lt["scores"][m]["value"], rel=1e-4, abs=1e-5)
        assert [c for c, _ in rt["correspondences"]["sandal"]] == [c for c, _ in lt["correspondences"]["sandal"]]

    # The table, with the server named; the URL may come from the environment.
    table = invoke("rank", target_zip, "--teachers", TEACHERS, env={"HUBSCOUT_SERVER": embedded_service.base_url})
    assert table.exit_code == 0, table.output
    assert "fashion-footwear" in table.stdout and "ot (↓)" in table.stdout
    assert "ranked in" in table.output and f"on {embedded_service.base_url}" in table.output


def test_distill_on_the_server_downloads_the_student(embedded_service, target_zip, footwear_test, tmp_path):
    from hubscout.distill import evaluate, load_student

    out = tmp_path / "student"
    res = invoke("distill", target_zip, "--teacher", "fashion-footwear", "--student", "test_resnet", "--epochs", 3,
                 "--min-steps", 0, "--out", out, "--json", "--server", embedded_service.base_url)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["out"] == str(out) and summary["epochs"] == 3 and "curves" not in summary
    assert {"model.safetensors", "model.onnx", "MODEL_CARD.md", "config.json"} <= {p.name for p in out.iterdir()}
    student = load_student(out)
    assert student.arch == "test_resnet" and student.metrics["train_accuracy"] == summary["train_accuracy"]
    assert evaluate(student, footwear_test)["n"] == 300


def test_teachers_list_on_the_server(embedded_service, quick_repo):
    res = invoke("teachers", "list", "--json", "--server", embedded_service.base_url)
    assert res.exit_code == 0, res.output
    assert sorted(t["id"] for t in json.loads(res.stdout)) == sorted(quick_repo.ids())


@pytest.fixture(scope="module")
def photos_zip(tmp_path_factory):
    """Real RGB photos (crops of scikit-image's sample photos), as a user's ImageFolder zip."""
    from hubscout.data import write_image_folder_zip
    from hubscout.sources import photo_target

    return write_image_folder_zip(photo_target(10, seed=0), tmp_path_factory.mktemp("photos") / "photos.zip")


def test_photos_get_the_imagenet_teacher_first_locally_and_on_the_server(embedded_service, quick_repo, photos_zip):
    """The defaults, through both paths: the same order, an ImageNet teacher first; the small repository is ranked
    exhaustively and says so. `--shortlist` goes to the server like any other option."""
    local = invoke("rank", photos_zip, "--json", "--repo", quick_repo.root)
    remote = invoke("rank", photos_zip, "--json", "--server", embedded_service.base_url)
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    lj, rj = json.loads(local.stdout), json.loads(remote.stdout)
    order = [t["teacher_id"] for t in lj["teachers"]]
    assert order == [t["teacher_id"] for t in rj["teachers"]] and len(order) == len(quick_repo)
    assert order[0] == "imagenet-efficientnet-lite0"
    assert lj["shortlist"]["mode"] == rj["shortlist"]["mode"] == "exhaustive"
    for a, b in zip(lj["teachers"], rj["teachers"]):
        assert a["scores"]["ot"]["value"] == pytest.approx(b["scores"]["ot"]["value"], rel=1e-4, abs=1e-5)

    same = invoke("rank", photos_zip, "--shortlist", 2, "--json", "--server", embedded_service.base_url)
    assert same.exit_code == 0, same.output
    job = json.loads(same.stdout)
    assert [t["teacher_id"] for t in job["teachers"]] == order  # 5 teachers: exhaustive whatever k
    table = invoke("rank", photos_zip, "--repo", quick_repo.root)
    assert table.exit_code == 0 and "exhaustive: 5 teachers, at most 32" in table.output


def test_server_errors_are_one_line_messages(embedded_service, target_zip, tmp_path):
    res = invoke("rank", target_zip, "--teachers", "ghost", "--server", embedded_service.base_url)
    assert res.exit_code == EXIT_REJECTED and "422" in res.output and "unknown teacher(s): ghost" in res.output

    res = invoke("distill", target_zip, "--teacher", "fashion-footwear", "--epochs", 100000, "--out",
                 tmp_path / "s", "--server", embedded_service.base_url)
    assert res.exit_code == EXIT_REJECTED and "epochs" in res.output and not (tmp_path / "s").exists()

    res = invoke("rank", tmp_path / "nothing.zip", "--server", embedded_service.base_url)
    assert res.exit_code == EXIT_INPUT and "nothing.zip" in res.output

    res = invoke("rank", target_zip, "--server", f"http://127.0.0.1:{free_port()}")
    assert res.exit_code == EXIT_UNREACHABLE and "cannot reach" in res.output

    res = invoke("jobs", "show", "job_nope", "--server", embedded_service.base_url)
    assert res.exit_code == EXIT_REJECTED and "404" in res.output


def test_jobs_and_students_commands_script_a_pipeline(embedded_service, target_zip, tmp_path):
    from hubscout.client import Client

    server = ["--server", embedded_service.base_url]
    with Client(embedded_service.base_url) as c:
        ds = c.upload(target_zip)
        done = c.distill(ds["id"], ["fashion-footwear"], student_arch="test_resnet", epochs=1, min_steps=0)
        res = invoke("jobs", "wait", done["id"], "--json", *server)
        assert res.exit_code == 0, res.output
        finished = json.loads(res.stdout)
        assert finished["status"] == "succeeded" and finished["computing_s"] > 0 and finished["queued_s"] >= 0
        # A second job, cancelled: waiting for it is a failed job's exit code.
        doomed = c.distill(ds["id"], ["fashion-footwear"], student_arch="test_resnet", epochs=50, min_steps=0)
    res = invoke("jobs", "cancel", doomed["id"], *server)
    assert res.exit_code == 0 and f"{doomed['id']}: cancelled" in res.stdout
    res = invoke("jobs", "wait", doomed["id"], *server)
    assert res.exit_code == EXIT_JOB_FAILED and "cancelled" in res.output

    res = invoke("jobs", "list", "--kind", "distillation", "--json", *server)
    assert res.exit_code == 0
    listed = {j["id"]: j["status"] for j in json.loads(res.stdout)["items"]}
    assert listed[done["id"]] == "succeeded" and listed[doomed["id"]] == "cancelled"
    table = invoke("jobs", "list", *server)
    assert done["id"] in table.stdout and "succeeded" in table.stdout
    shown = json.loads(invoke("jobs", "show", done["id"], *server).stdout)
    assert shown["id"] == done["id"] and shown["result_id"]

    out = tmp_path / "student"
    res = invoke("students", "download", done["id"], "--out", out, *server)
    assert res.exit_code == 0 and res.stdout.strip() == f"student saved to {out}"
    assert {"model.onnx", "predict.py", "config.json"} <= {p.name for p in out.iterdir()}
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o600"}

    res = invoke("teachers", "show", "fashion-footwear", *server)
    assert res.exit_code == 0 and json.loads(res.stdout)["id"] == "fashion-footwear"
