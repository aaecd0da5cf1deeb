"""The command line end to end on the quick repository: demo target → rank → distil → evaluate."""
import json

import numpy as np
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from hubscout.cli import EXIT_INPUT, EXIT_REJECTED, EXIT_USAGE, app
from hubscout.data import Dataset
from hubscout.spec import load_specification
from hubscout.teachers import Repository, build_model

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_rank_distil_evaluate(quick_repo, tmp_path):
    target, test = tmp_path / "footwear.zip", tmp_path / "footwear-test.npz"
    assert invoke("data", "demo-target", "footwear", "--shots", 10, "--out", target).exit_code == 0
    assert invoke("data", "demo-target", "footwear", "--split", "test", "--out", test).exit_code == 0

    plots = tmp_path / "plots"
    res = invoke("rank", target, "--repo", quick_repo.root, "--metric", "ot,leep", "--json", "--plot", plots)
    assert res.exit_code == 0, res.output
    ranking = json.loads(res.stdout)
    assert ranking["teachers"][0]["teacher_id"] == "fashion-footwear"
    # The zip keeps the target's class order (classes.txt), the one an npz of it has.
    assert ranking["n_samples"] == 30 and ranking["classes"] == ["sandal", "sneaker", "ankle-boot"]
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
    res = invoke("students", "sizes", "--classes", 3, "--channels", 1, "--json")
    assert res.exit_code == 0, res.output
    sizes = json.loads(res.stdout)
    assert [z["name"] for z in sizes][:2] == ["nano", "micro"] and sizes[0]["params"] < sizes[-1]["params"] <= 5e6
    target = tmp_path / "digits.npz"
    assert invoke("data", "demo-target", "handwritten", "--shots", 5, "--out", target).exit_code == 0
    res = invoke("distill", target, "--repo", quick_repo.root, "--teacher", "mnist-digits",
                 "--student", "vit_tiny_patch16_224", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "cannot take this dataset" in res.output and not (tmp_path / "s").exists()


def test_each_kind_of_failure_has_its_exit_code_and_one_line(quick_repo, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive")
    res = invoke("rank", junk, "--repo", quick_repo.root)
    assert res.exit_code == EXIT_INPUT == 3 and "unreadable archive" in res.output
    res = invoke("rank", tmp_path / "missing.npz", "--repo", quick_repo.root)
    assert res.exit_code == EXIT_INPUT and "no such file" in res.output and "missing.npz" in res.output

    res = invoke("teachers", "show", "nobody", "--repo", quick_repo.root)
    assert res.exit_code == EXIT_REJECTED == 4 and "unknown teacher" in res.output

    target = tmp_path / "t.npz"
    assert invoke("data", "demo-target", "footwear", "--shots", 2, "--out", target).exit_code == 0
    res = invoke("rank", target, "--repo", quick_repo.root, "--metric", "accuracy")
    assert res.exit_code == EXIT_USAGE == 2 and "accuracy" in res.output
    res = invoke("rank", target, "--repo", quick_repo.root, "--no-such-option")
    assert res.exit_code == EXIT_USAGE  # click's own usage error
    res = invoke("jobs", "list", env={"HUBSCOUT_SERVER": ""})
    assert res.exit_code == EXIT_USAGE and "--server" in res.output


def test_without_a_repository_it_says_where_repositories_come_from(tmp_path, monkeypatch):
    target = tmp_path / "t.npz"
    assert invoke("data", "demo-target", "footwear", "--shots", 2, "--out", target).exit_code == 0
    monkeypatch.chdir(tmp_path)  # outside the project folder: no ./demo-zoo
    res = invoke("rank", target)
    assert res.exit_code == EXIT_INPUT, res.output
    assert "--repo" in res.output and "HUBSCOUT_REPO" in res.output and "--server" in res.output
    assert not (tmp_path / "demo-zoo").exists()  # nothing built, nothing offered to be built


def test_data_commands_describe_and_size_targets(tmp_path):
    from hubscout.data import load_dataset
    from hubscout.sources import TARGETS

    res = invoke("data", "targets")
    assert res.exit_code == 0
    for t in TARGETS.values():
        assert t.name in res.stdout
    assert "Fashion-MNIST footwear" in res.stdout and "ankle-boot" in res.stdout

    test = tmp_path / "test.npz"
    res = invoke("data", "demo-target", "footwear", "--split", "test", "--shots", 100, "--out", test)
    assert res.exit_code == 0, res.output
    assert load_dataset(test).class_counts() == {"sandal": 100, "sneaker": 100, "ankle-boot": 100}
    zipped = tmp_path / "test.zip"
    res = invoke("data", "demo-target", "footwear", "--split", "test", "--shots", 5, "--out", zipped)
    assert load_dataset(zipped).classes == load_dataset(test).classes == ["sandal", "sneaker", "ankle-boot"]
    assert "classes sandal, sneaker, ankle-boot" in res.output


def test_table_fits_the_terminal_wraps_and_counts_what_it_leaves_out(quick_repo, tmp_path):
    target = tmp_path / "fashion-all.npz"
    assert invoke("data", "demo-target", "fashion-all", "--shots", 2, "--out", target).exit_code == 0
    common = ["rank", target, "--repo", quick_repo.root, "--teachers", "fashion-clothes,fashion-footwear"]
    as_json = json.loads(invoke(*common, "--metric", "ot,logme,leep", "--json").stdout)
    for columns, metric in ((80, "ot,logme"), (50, "ot,logme,leep")):  # a table; one block per teacher
        res = invoke(*common, "--metric", metric, env={"COLUMNS": str(columns)})
        assert res.exit_code == 0, res.output
        assert max(len(line) for line in res.stdout.splitlines()) <= columns
        assert "…" not in res.stdout  # nothing cut short
        words = res.stdout.split()
        for t in as_json["teachers"]:
            assert t["teacher_id"] in words  # ids whole
            for m in metric.split(","):
                assert f"{t['scores'][m]['value']:.4f}" in words  # numbers whole
        # 10 classes: 6 shown per cell, the other 4 counted, in both class columns of both teachers.
        assert res.stdout.count("+4 more") == 4
    # Progress off a terminal: whole lines, no cursor movement or carriage returns.
    assert "\x1b[" not in res.stderr and "\r" not in res.stderr
    assert "teachers: 2/2 teacher (100%)" in res.stderr


def test_distil_says_where_the_student_is_on_stdout_and_keeps_it_private(quick_repo, tmp_path):
    target = tmp_path / "t.npz"
    assert invoke("data", "demo-target", "footwear", "--shots", 4, "--out", target).exit_code == 0
    out = tmp_path / "student"
    res = invoke("distill", target, "--repo", quick_repo.root, "--teacher", "fashion-footwear", "--epochs", 1,
                 "--min-steps", 0, "--student", "test_resnet", "--out", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"student saved to {out}")
    files = sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "model.onnx", "predict.py", "labels.json", "MODEL_CARD.md"} <= set(files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {f: "0o600" for f in files}
    assert json.loads((out / "labels.json").read_text()) == ["sandal", "sneaker", "ankle-boot"]


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
    assert res.exit_code == EXIT_INPUT and "do not fit" in res.output
    res = invoke("teachers", "add", "--weights", pickle, "--name", "Pickle", *common)
    assert res.exit_code == EXIT_INPUT and "safetensors" in res.output
    assert Repository(repo).ids() == []  # nothing half-stored

    rng = np.random.default_rng(0)
    sample, alien = tmp_path / "sample.npz", tmp_path / "alien.npz"
    Dataset(rng.integers(0, 255, (9, 28, 28), dtype=np.uint8), np.arange(9) % 3, ["a", "b", "c"]).save(sample)
    Dataset(rng.integers(0, 255, (4, 28, 28), dtype=np.uint8), np.arange(4) % 2, ["a", "zebra"]).save(alien)
    res = invoke("teachers", "add", "--weights", good, "--name", "Alien", "--spec-sample", alien, *common)
    assert res.exit_code == EXIT_INPUT and "zebra" in res.output
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
