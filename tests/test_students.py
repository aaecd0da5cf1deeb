"""Students by size, honest controls: the default student's size rule, the input check, the schedule, the CE-only
control and numerical safety."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hubscout.distill import (DirControlCache, DistillConfig, StudentError, distill, plan_schedule,
                              resolve_student)
from hubscout.options import size_listing
from hubscout.students import MAX_DEFAULT_PARAMS, STUDENT_SIZES, check_input, choose_student, size_table
from hubscout.teachers import Repository, build_model
from test_distill import FAST, _add_teacher, _toy_dataset


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repository:
    repo = Repository(tmp_path_factory.mktemp("students-repo"))
    _add_teacher(repo, ["x", "y", "z", "w"], 0, "small-teacher")  # test_efficientnet, about 100 k parameters
    return repo


@pytest.fixture(scope="module")
def toy():
    return _toy_dataset()


def _real_params(arch: str, kwargs, classes: int, channels: int) -> int:
    return sum(p.numel() for p in build_model(arch, classes, channels, kwargs).parameters())


def test_sizes_are_ordered_and_counted_like_the_real_model():
    table = size_table(10, 1)
    assert [r["name"] for r in table] == [s.name for s in STUDENT_SIZES]
    counts = [r["params"] for r in table]
    assert counts == sorted(counts) and counts[0] < 30_000 and counts[-1] <= MAX_DEFAULT_PARAMS
    for r in table[:2]:  # the meta-device count is the real model's
        assert r["params"] == _real_params(r["arch"], r["kwargs"], 10, 1)
    # The torch-free listing (/v1/info) states the counts at 10 classes, RGB, that the models have.
    assert [r["params"] for r in size_listing()] == [r["params"] for r in size_table(10, 3)]


def test_default_student_is_never_larger_than_the_teacher(repo, toy):
    teacher = repo.get("small-teacher")
    assert 50_000 < teacher.num_params < 200_000
    cfg, choice = resolve_student(toy, repo, ["small-teacher"], DistillConfig())
    params = _real_params(cfg.student_arch, cfg.student_kwargs, toy.num_classes, 1)
    assert choice["params"] == params <= teacher.num_params and not choice["larger_than_teachers"]
    # The largest size that fits: the next one up would be larger than the teacher.
    names = [s.name for s in STUDENT_SIZES]
    bigger = STUDENT_SIZES[names.index(choice["size"]) + 1]
    assert _real_params(bigger.arch, bigger.kwargs, toy.num_classes, 1) > teacher.num_params
    # Without teachers (CE only) the 5 M cap alone; several teachers: the smallest one caps.
    alone = choose_student("auto", None, 3, 1, [])
    assert alone.size == STUDENT_SIZES[-1].name and alone.params <= MAX_DEFAULT_PARAMS
    assert choose_student("auto", None, 3, 1, [teacher.num_params, 4_000_000]).size == choice["size"]


def test_asked_for_student_larger_than_teacher_is_trained_but_flagged(repo, toy):
    _, choice = resolve_student(toy, repo, ["small-teacher"], DistillConfig(student_arch="small"))
    assert choice["larger_than_teachers"] and choice["size"] == "small"
    assert "parameters of the smallest teacher" in choice["note"]
    tiny_teacher = choose_student("auto", None, 3, 1, [5_000])  # smaller than any size: the smallest, flagged
    assert tiny_teacher.size == STUDENT_SIZES[0].name and tiny_teacher.larger_than_teachers
    with pytest.raises(StudentError, match="no architecture options"):
        choose_student("tiny", {"drop_rate": 0.1}, 3, 1, [])


def test_student_that_cannot_take_the_input_is_refused_before_training(repo, toy):
    calls = []
    t0 = time.perf_counter()
    with pytest.raises(StudentError, match="224"):
        distill(toy, repo, ["small-teacher"], DistillConfig(**{**FAST, "student_arch": "vit_tiny_patch16_224"}),
                on_progress=lambda f, m: calls.append(m))
    assert calls == [] and time.perf_counter() - t0 < 30  # nothing started: no teacher pass, no epoch
    with pytest.raises(StudentError, match="Kernel size"):  # too small for its downsampling
        check_input("inception_v3", None, 3, 1, 32)
    check_input("resnet10t", STUDENT_SIZES[0].kwargs, 3, 1, 32)
    check_input("test_vit", {"img_size": 32}, 3, 1, 32)  # a fixed-size model at its own size is fine
    with pytest.raises(StudentError, match="unknown timm"):
        check_input("no_such_net", None, 3, 1, 32)


def test_schedule_epochs_mean_epochs_and_caps_hold():
    n = 24  # 10-shot-like: one optimiser step an epoch at batch 32
    assert plan_schedule(DistillConfig(epochs=20), n)["epochs"] == 20
    default = plan_schedule(DistillConfig(), n)
    assert default["epochs"] == 300 and "at least 300 optimiser steps" in default["note"]  # the library: no cap
    capped = plan_schedule(DistillConfig(max_epochs=200), n)
    assert capped["epochs"] == 200 and "capped" in capped["note"]
    assert plan_schedule(DistillConfig(), 640)["epochs"] == 40  # 20 steps an epoch: 800 steps ≥ 300
    huge = plan_schedule(DistillConfig(epochs=1, min_steps=100_000, max_epochs=200), n)
    assert huge["epochs"] == 200 and huge["steps"] == 200 and "capped at max_epochs=200" in huge["note"]
    assert plan_schedule(DistillConfig(epochs=1, min_steps=10), n)["epochs"] == 10
    with pytest.raises(ValueError, match="epochs"):
        DistillConfig(epochs=201, max_epochs=200)


def test_result_and_card_report_the_epochs_run(repo, toy, tmp_path):
    from hubscout.export import CARD_FILE

    s = distill(toy, repo, ["small-teacher"], DistillConfig(**{**FAST, "epochs": 1, "min_steps": 100_000,
                                                                 "max_epochs": 2}))
    m = s.metrics
    assert m["epochs"] == 2 == len(m["curves"]["epoch"]) and m["steps"] == 2 * m["schedule"]["steps_per_epoch"]
    assert m["schedule"]["epochs_asked"] == 1 and "capped" in m["schedule"]["note"]
    card = (s.save(tmp_path / "st") / CARD_FILE).read_text()
    assert "| epochs run | 2 |" in card and f"| optimiser steps run | {m['steps']} |" in card
    assert "| epochs (asked; null: the default) | 1 |" in card and "| epochs | " not in card
    assert m["schedule"]["note"] in card


def test_ce_only_control_beside_the_student_and_cached(repo, toy, tmp_path):
    cache = DirControlCache(tmp_path / "controls")
    cfg = DistillConfig(**FAST, seed=1)
    s = distill(toy, repo, ["small-teacher"], cfg, ce_control=True, control_cache=cache)
    ctrl = s.metrics["ce_only"]
    ce = distill(toy, None, [], DistillConfig(**FAST, seed=1, ce_only=True))
    assert ctrl["val_accuracy"] == ce.metrics["val_accuracy"] and not ctrl["cached"]
    assert s.metrics["gain_vs_ce"] == pytest.approx(s.metrics["val_accuracy"] - ctrl["val_accuracy"])
    assert len(list((tmp_path / "controls").glob("*.json"))) == 1
    # A second distillation on the same data with another distillation option reads the control, trains none.
    progress = []
    again = distill(toy, repo, ["small-teacher"], DistillConfig(**{**FAST, "seed": 1, "lam": 2.0}), ce_control=True,
                    control_cache=cache, on_progress=lambda f, m: progress.append(f))
    assert again.metrics["ce_only"]["cached"] and again.metrics["ce_only"]["val_accuracy"] == ctrl["val_accuracy"]
    assert max(progress) == 1.0 and len(list((tmp_path / "controls").glob("*.json"))) == 1
    # Another seed is another control.
    other = distill(toy, repo, ["small-teacher"], DistillConfig(**FAST, seed=2), ce_control=True,
                    control_cache=cache)
    assert not other.metrics["ce_only"]["cached"] and len(list((tmp_path / "controls").glob("*.json"))) == 2


def test_kd_options_have_bounds():
    for bad in ({"lam": 1000.0}, {"lam": -1.0}, {"tau": 0.01}, {"tau": 100.0}, {"reg": 0.0}, {"reg": 50.0},
                {"lam": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DistillConfig(**bad)
    DistillConfig(lam=100.0, tau=0.1, reg=0.001)  # the bounds themselves are allowed


def test_non_finite_loss_stops_training(repo, toy, poisoned_teacher):
    tid = poisoned_teacher(repo)
    epochs = []
    with pytest.raises(StudentError, match="loss became nan"):
        distill(toy, repo, [tid], DistillConfig(**FAST), on_epoch=lambda c: epochs.append(len(c["epoch"])))
    assert epochs == []  # stopped within the first epoch, nothing returned to save
    assert np.isfinite(toy.images).all()
