"""The command line end to end on the quick repository: demo target → rank → distil → evaluate."""
import json

import numpy as np
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from hubscout.cli import app
from hubscout.data import Dataset
from hubscout.spec import load_specification
from hubscout.teachers import Repository, build_model

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_rank_distil_evaluate(quick_repo, tmp_path):
    target, test = tmp_path / "footwear.zip", tmp_path / "footwear-test.npz"
    assert invoke("data", "demo-target", "footwear", "--shots", 10, "--out", target).exit_code == 0
    assert invoke("data", "demo-target", "footwear", "--split", "test", "--out", test).exit_code == 0

    plots = tmp_path / "plots"
    res = invoke("rank", target, "--repo", quick_repo.root, "--metric", "ot,leep", "--json", "--plot", plots)
    assert res.exit_code == 0, res.output
    ranking = json.loads(res.stdout)
    assert ranking["teachers"][0]["teacher_id"] == "fashion-footwear"
    assert ranking["n_samples"] == 30 and ranking["classes"] == ["ankle-boot", "sandal", "sneaker"]
    # The ranking's bars and the plans of the best three teachers.
    best3 = [t["teacher_id"] for t in ranking["teachers"][:3]]
    assert sorted(p.name for p in plots.iterdir()) == sorted(["ranking.png"] + [f"plan-{t}.png" for t in best3])
    for p in plots.iterdir():
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) > 250, p.name

    out = tmp_path / "student"
    res = invoke("distill", target, "--repo", quick_repo.root, "--teacher", "fashion-footwear", "--epochs", 3,
                 "--min-steps", 40, "--student", "resnet10t", "--out", out, "--json", "--plot", plots)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    # 24 training images, one step an epoch: 3 epochs asked, 40 run for the 40 steps asked, and it says so.
    assert summary["epochs"] == 40 == summary["schedule"]["epochs"] and "extended" in summary["schedule"]["note"]
    assert summary["ce_only"]["val_accuracy"] is not None and summary["ce_only"]["n_val"] == summary["n_val"]
    assert summary["student"]["arch"] == "resnet10t" and summary["student"]["larger_than_teachers"]
    assert {"model.safetensors", "config.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    with Image.open(plots / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1100, 374)

    res = invoke("evaluate", out, test, "--json")
    assert res.exit_code == 0, res.output
    acc = json.loads(res.stdout)["accuracy"]
    assert acc > 0.5, f"3-class student at {acc:.2f}, chance is 0.33"


def test_students_listed_and_a_student_that_cannot_fit_refused(quick_repo, tmp_path):
    res = invoke("students", "--classes", 3, "--channels", 1, "--json")
    assert res.exit_code == 0, res.output
    sizes = json.loads(res.stdout)
    assert [z["name"] for z in sizes][:2] == ["nano", "micro"] and sizes[0]["params"] < sizes[-1]["params"] <= 5e6
    target = tmp_path / "digits.npz"
    assert invoke("data", "demo-target", "handwritten", "--shots", 5, "--out", target).exit_code == 0
    res = invoke("distill", target, "--repo", quick_repo.root, "--teacher", "mnist-digits",
                 "--student", "vit_tiny_patch16_224", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "cannot take this dataset" in res.output and not (tmp_path / "s").exists()


def test_bad_inputs_exit_2_with_a_message(quick_repo, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive")
    res = invoke("rank", junk, "--repo", quick_repo.root)
    assert res.exit_code == 2 and "unreadable archive" in res.output

    res = invoke("teachers", "show", "nobody", "--repo", quick_repo.root)
    assert res.exit_code == 2 and "unknown teacher" in res.output


def test_teachers_add_validates_weights(tmp_path):
    repo = tmp_path / "repo"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    good = tmp_path / "good.safetensors"
    save_file(build_model("resnet10t", 3, 1).state_dict(), str(good))
    wrong = tmp_path / "wrong.safetensors"
    save_file(build_model("resnet10t", 5, 1).state_dict(), str(wrong))
    pickle = tmp_path / "pickle.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    common = ["--arch", "resnet10t", "--labels", labels, "--channels", 1, "--input-size", 32, "--repo", repo]

    res = invoke("teachers", "add", "--weights", wrong, "--name", "Wrong", *common)
    assert res.exit_code == 2 and "do not fit" in res.output
    res = invoke("teachers", "add", "--weights", pickle, "--name", "Pickle", *common)
    assert res.exit_code == 2 and "safetensors" in res.output
    assert Repository(repo).ids() == []  # nothing half-stored

    rng = np.random.default_rng(0)
    sample, alien = tmp_path / "sample.npz", tmp_path / "alien.npz"
    Dataset(rng.integers(0, 255, (9, 28, 28), dtype=np.uint8), np.arange(9) % 3, ["a", "b", "c"]).save(sample)
    Dataset(rng.integers(0, 255, (4, 28, 28), dtype=np.uint8), np.arange(4) % 2, ["a", "zebra"]).save(alien)
    res = invoke("teachers", "add", "--weights", good, "--name", "Alien", "--spec-sample", alien, *common)
    assert res.exit_code == 2 and "zebra" in res.output
    assert Repository(repo).ids() == []

    res = invoke("teachers", "add", "--weights", good, "--name", "Good One", "--task", "toy",
                 "--spec-sample", sample, *common)
    assert res.exit_code == 0, res.output
    res = invoke("teachers", "list", "--repo", repo, "--json")
    listed = json.loads(res.stdout)
    assert [t["id"] for t in listed] == ["good-one"] and listed[0]["metadata"]["task"] == "toy"
    assert listed[0]["labels"] == ["a", "b", "c"] and np.isclose(listed[0]["input"]["mean"][0], 0.485)
    # Its specification was computed on adding, from the sample.
    spec = load_specification(Repository(repo), "good-one")
    assert spec is not None and spec.source == "training-sample" and spec.n_samples == 9
    res = invoke("teachers", "add", "--weights", good, "--name", "No Spec", "--no-spec", *common)
    assert res.exit_code == 0 and load_specification(Repository(repo), "no-spec") is None


def test_a_shortlisted_ranking_prints_the_skipped_teachers_and_how_to_rank_them(quick_repo, footwear_target, capsys):
    from hubscout.cli import _print_ranking
    from hubscout.rank import rank

    # exhaustive_max=0: shortlist even the quick zoo (the CLI leaves repositories this small exhaustive).
    result = rank(footwear_target, quick_repo, shortlist_k=1, exhaustive_max=0).to_dict()
    _print_ranking(result, again="hubscout rank shoes.zip --shortlist 0 --repo zoo")
    out = capsys.readouterr()
    text = out.out + out.err
    skipped = result["shortlist"]["not_run"]
    assert skipped and f"skipped {len(skipped)} teachers" in text and all(t in text for t in skipped)
    assert "rank them too: hubscout rank shoes.zip --shortlist 0 --repo zoo" in text
