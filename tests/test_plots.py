"""The PNG pictures of hubscout.plots: written, readable, sized by their content, on the JSON forms of results."""
import numpy as np
import pytest
from PIL import Image

from hubscout.ot import plan_summary
from hubscout.plots import DPI, plot_ranking, plot_ranking_dir, plot_training_curves, plot_transport_plan


def png(path):
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size, np.asarray(im.convert("L"))


def ranking_dict(n=4):
    teachers = []
    for i in range(n):
        plan = plan_summary(np.eye(3)[:, [0, 1, 2]] * 0.3 + 0.01 * (i + 1), ["x", "y", "z"], ["a", "b", "c"])
        teachers.append({"rank": i + 1, "teacher_id": f"teacher/{i}", "name": f"T{i}",
                         "scores": {"ot": {"value": 0.1 + 0.2 * i, "direction": "lower"},
                                    "logme": {"value": 1.0 - i, "direction": "higher"}},
                         "correspondences": {}, "plan": plan if i < 3 else None, "cached": False})
    return {"primary": "ot", "metrics": ["ot", "logme"], "directions": {"ot": "lower", "logme": "higher"},
            "n_samples": 30, "classes": ["a", "b", "c"], "teachers": teachers}


def test_transport_plan_heatmap(tmp_path):
    plan = np.array([[0.30, 0.01, 0.00], [0.02, 0.30, 0.01], [0.01, 0.02, 0.33]])
    (w, h), grey = png(plot_transport_plan(plan, tmp_path / "p.png", teacher_classes=["sandal", "sneaker", "boot"],
                                           target_classes=["Sandal", "Sneaker", "Ankle boot"], title="t"))
    assert 250 < w < 14 * DPI and 250 < h < 16 * DPI
    assert grey.min() < 60  # the dark diagonal cells are there
    with pytest.raises(ValueError):
        plot_transport_plan(plan, tmp_path / "x.png")  # a raw plan without class names


def test_a_thousand_class_plan_draws_only_its_heaviest_rows(tmp_path):
    rng = np.random.default_rng(0)
    plan = rng.random((1000, 4))
    plan /= plan.sum()
    summary = plan_summary(plan, [f"imagenet class {k}" for k in range(1000)], list("abcd"))
    assert len(summary["teacher_classes"]) == 60
    (w, h), _ = png(plot_transport_plan(summary, tmp_path / "big.png", max_rows=20))
    (_, h60), _ = png(plot_transport_plan(summary, tmp_path / "big60.png", max_rows=60))
    assert h60 > h + 200  # 40 more rows are drawn taller, not squeezed


def test_ranking_bars_and_curves(tmp_path):
    (w, h), _ = png(plot_ranking(ranking_dict(), tmp_path / "r.png"))
    (w8, h8), _ = png(plot_ranking(ranking_dict(8), tmp_path / "r8.png", metric="logme"))
    assert w == w8 == int(7.5 * DPI) and h8 > h  # one bar per teacher
    with pytest.raises(ValueError):
        plot_ranking(ranking_dict(), tmp_path / "none.png", metric="nce")

    curves = {"epoch": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "ce": [1.1, 0.9, 0.7], "ot": [0.05, 0.04, 0.03],
              "train_acc": [0.4, 0.6, 0.8], "val_acc": [0.3, 0.5, 0.6]}
    (w, h), _ = png(plot_training_curves(curves, tmp_path / "c.png"))
    assert (w, h) == (10 * DPI, int(3.4 * DPI))
    ce_only = {**curves, "ot": [None] * 3, "val_acc": [None] * 3}  # a CE-only student without validation split
    png(plot_training_curves(ce_only, tmp_path / "sub" / "c2.png"))
    with pytest.raises(ValueError):
        plot_training_curves({"epoch": []}, tmp_path / "c3.png")


def test_ranking_dir_writes_the_bars_and_the_best_plans(tmp_path):
    written = plot_ranking_dir(ranking_dict(), tmp_path / "out", plans=2)
    assert [p.name for p in written] == ["ranking.png", "plan-teacher_0.png", "plan-teacher_1.png"]
    for p in written:
        png(p)
