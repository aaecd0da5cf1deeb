"""Distillation: the OT loss, training, saving/loading and evaluation of a student."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hubscout.data import Dataset
from hubscout.distill import (DistillConfig, Student, StudentError, augment_images, distill, evaluate,
                              kl_loss, load_student, ot_loss)
from hubscout.teachers import InputConfig, Repository, build_model

FAST = dict(min_steps=0, student_arch="test_resnet", epochs=3, batch_size=16, teacher_views=2, sinkhorn_iters=10)


def _toy_dataset(n_per_class: int = 8, classes=("a", "b", "c"), seed: int = 0, side: int = 16) -> Dataset:
    """Classes that differ by where a bright square sits, so a few epochs learn something."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(len(classes)):
        for _ in range(n_per_class):
            im = rng.integers(0, 60, (side, side), dtype=np.uint8)
            r = 2 + 4 * c
            im[r:r + 4, 3:side - 3] = 255
            images.append(im)
            labels.append(c)
    return Dataset(np.stack(images), np.array(labels), list(classes), name="toy")


def _add_teacher(repo: Repository, labels: list[str], seed: int, teacher_id: str):
    torch.manual_seed(seed)
    model = build_model("test_efficientnet", len(labels), 1)
    return repo.add(arch="test_efficientnet", weights=model.state_dict(), labels=labels, name=teacher_id,
                    input=InputConfig(32, 1, (0.5,), (0.5,)), teacher_id=teacher_id)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Repository:
    repo = Repository(tmp_path_factory.mktemp("repo"))
    _add_teacher(repo, ["x", "y", "z", "w"], 0, "t-one")
    _add_teacher(repo, ["p", "q"], 1, "t-two")
    return repo


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return _toy_dataset()


@pytest.fixture(scope="module")
def student(toy, tiny_repo) -> Student:
    return distill(toy, tiny_repo, ["t-one"], DistillConfig(**FAST, seed=3))


# ------------------------------------------------------------------------------------------------------- loss

def test_ot_loss_differentiable_and_decreases_towards_teacher():
    torch.manual_seed(0)
    K = C = 4
    M = 1.0 - torch.eye(K)  # teacher class k is target class k
    teacher = torch.randn(8, K) * 3
    student = torch.randn(8, C, requires_grad=True)
    student0 = student.detach().clone()
    kw = dict(tau=1.0, reg=0.05, n_iter=20)
    loss0 = ot_loss(teacher, student, M, **kw)
    loss0.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    matched = ot_loss(teacher, teacher.clone(), M, **kw)
    assert matched < loss0

    opt = torch.optim.Adam([student], lr=0.2)
    for _ in range(60):
        opt.zero_grad()
        loss = ot_loss(teacher, student, M, **kw)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * loss0.item()
    # Transport along the diagonal: the student's prediction approaches the teacher's.
    gap = (torch.softmax(student, 1) - torch.softmax(teacher, 1)).abs().sum(1).mean() / 2
    gap0 = (torch.softmax(student0, 1) - torch.softmax(teacher, 1)).abs().sum(1).mean() / 2
    assert gap < 0.25 * gap0


def test_augment_deterministic_and_shape():
    ds = _toy_dataset(2)
    a = augment_images(ds.images, torch.Generator().manual_seed(1))
    b = augment_images(ds.images, torch.Generator().manual_seed(1))
    c = augment_images(ds.images, torch.Generator().manual_seed(2))
    assert a.shape == ds.images.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------------------------------- config

def test_config_roundtrip_and_validation():
    cfg = DistillConfig(lam=0.5, tau=2.0, student_kwargs={"drop_rate": 0.1})
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert DistillConfig.from_dict({"epochs": 5}).epochs == 5
    with pytest.raises(ValueError, match="unknown"):
        DistillConfig.from_dict({"epoch": 5})
    with pytest.raises(ValueError, match="cost"):
        DistillConfig(cost="nope")
    with pytest.raises(ValueError, match="tau"):
        DistillConfig(tau=0)
    with pytest.raises(ValueError, match="kd"):
        DistillConfig(kd="refilled")
    assert DistillConfig.from_dict({"kd": "proto", "proto_temperature": 0.2}).kd == "proto"


# ------------------------------------------------------------------------------------------------------- distill

def test_distill_metrics_and_teachers(student, toy, tiny_repo):
    m = student.metrics
    assert student.classes == toy.classes
    assert set(m["curves"]) >= {"epoch", "loss", "ce", "ot", "train_acc", "val_acc"}
    assert m["curves"]["epoch"] == [1, 2, 3]
    assert all(v is not None and np.isfinite(v) for v in m["curves"]["ot"])
    assert 0 <= m["train_accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1
    assert m["n_val"] == 6 and m["n_train"] == 18  # 20 % of 8 per class, stratified
    assert m["device"] and m["elapsed_s"] > 0
    t = tiny_repo.get("t-one")
    assert student.teachers == [{"id": "t-one", "name": "t-one", "weights_sha256": t.weights_sha256, "weight": 1.0,
                                 "ot_relatedness": None}]  # one teacher: no relatedness computed
    assert not student.model.training


def test_distill_is_deterministic(toy, tiny_repo, student):
    again = distill(toy, tiny_repo, ["t-one"], DistillConfig(**FAST, seed=3), device="cpu")
    assert np.array_equal(again.predict_proba(toy), student.predict_proba(toy))
    assert again.metrics["curves"]["loss"] == student.metrics["curves"]["loss"]


def test_ce_only(toy, tiny_repo):
    s = distill(toy, tiny_repo, [], DistillConfig(**FAST, ce_only=True))
    assert s.teachers == []
    assert s.metrics["curves"]["ot"] == [None] * 3
    # Named teachers are ignored, not loaded, for the CE-only student.
    s2 = distill(toy, None, ["does-not-exist"], DistillConfig(**FAST, ce_only=True))
    assert np.array_equal(s.predict(toy), s2.predict(toy))
    with pytest.raises(StudentError, match="teacher"):
        distill(toy, tiny_repo, [], DistillConfig(**FAST))


def test_multi_teacher_weights_normalised(toy, tiny_repo):
    cfg = DistillConfig(**{**FAST, "epochs": 1})
    s = distill(toy, tiny_repo, ["t-one", "t-two"], cfg, mixture=[3.0, 1.0])
    assert [t["id"] for t in s.teachers] == ["t-one", "t-two"]
    assert [t["weight"] for t in s.teachers] == pytest.approx([0.75, 0.25])
    s = distill(toy, tiny_repo, ["t-one", "t-two"], cfg)
    assert [t["weight"] for t in s.teachers] == pytest.approx([0.5, 0.5])
    with pytest.raises(StudentError, match="weights"):
        distill(toy, tiny_repo, ["t-one", "t-two"], cfg, mixture=[1.0])
    with pytest.raises(StudentError, match="non-negative"):
        distill(toy, tiny_repo, ["t-one", "t-two"], cfg, mixture=[1.0, -1.0])


def test_kl_loss_hand_example():
    t = torch.tensor([[2.0, 0.0]])
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    p = torch.softmax(t / 2.0, dim=1)
    expected = float((p * (p.log() - np.log(0.5))).sum())
    loss = kl_loss(t, s, tau=2.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]  # the student moves towards the teacher's preferred class
    assert float(kl_loss(t, t.clone(), tau=2.0)) == pytest.approx(0.0, abs=1e-7)


def test_prototype_kd_baseline(toy, tiny_repo, student):
    cfg = DistillConfig(**FAST, seed=3, kd="proto")
    s = distill(toy, tiny_repo, ["t-one"], cfg, device="cpu")
    curves = s.metrics["curves"]
    assert all(v is not None and np.isfinite(v) and v >= 0 for v in curves["kd"])
    assert curves["ot"] == [None] * 3
    assert s.config.kd == "proto"
    # Same seed, same data, another distillation term: another student.
    assert not np.array_equal(s.predict_proba(toy), student.predict_proba(toy))
    assert curves["kd"] != student.metrics["curves"]["kd"]


def test_tiny_data_keeps_every_class_in_train(tiny_repo):
    ds = _toy_dataset(1)  # one sample per class: nothing can go to validation
    s = distill(ds, tiny_repo, ["t-two"], DistillConfig(**{**FAST, "epochs": 1}))
    assert s.metrics["n_train"] == 3 and s.metrics["n_val"] == 0 and s.metrics["val_accuracy"] is None


# ------------------------------------------------------------------------------------------------------- save/load

def test_save_load_identical_predictions(student, toy, tmp_path):
    out = student.save(tmp_path / "s")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "metrics.json", "labels.json",
                                               "model.onnx", "MODEL_CARD.md", "predict.py"}
    loaded = load_student(out)
    assert np.array_equal(loaded.predict(toy), student.predict(toy))
    np.testing.assert_allclose(loaded.predict_proba(toy), student.predict_proba(toy), rtol=0, atol=1e-6)
    assert loaded.classes == student.classes and loaded.input == student.input
    assert loaded.config == student.config and loaded.teachers == student.teachers
    assert loaded.metrics["train_accuracy"] == student.metrics["train_accuracy"]


def test_saved_config_fields(student, toy, tmp_path):
    import hubscout

    out = student.save(tmp_path / "s")
    cfg = json.loads((out / "config.json").read_text())
    for key in ("arch", "arch_kwargs", "num_classes", "classes", "input", "teachers", "hyperparameters",
                "hubscout_version", "dataset_sha256", "dataset_name", "weights_sha256"):
        assert key in cfg, key
    assert cfg["dataset_name"] == "toy"
    assert {"model.onnx", "MODEL_CARD.md"} <= {p.name for p in out.iterdir()}
    assert cfg["arch"] == "test_resnet" and cfg["num_classes"] == 3 and cfg["classes"] == ["a", "b", "c"]
    assert cfg["input"]["channels"] == 1 and cfg["input"]["size"] == 32  # 16 px images, at least 32
    assert cfg["hubscout_version"] == hubscout.__version__ and cfg["dataset_sha256"] == toy.sha256
    assert cfg["hyperparameters"]["lam"] == student.config.lam and cfg["teachers"][0]["id"] == "t-one"
    assert json.loads((out / "labels.json").read_text()) == ["a", "b", "c"]  # a list in output index order
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"train_accuracy", "val_accuracy", "curves", "elapsed_s", "device"}


def test_load_errors(student, tmp_path):
    out = student.save(tmp_path / "s")
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StudentError, match="model.safetensors"):
        load_student(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(StudentError, match="no model.safetensors"):
        load_student(out)
    with pytest.raises(StudentError, match="no student folder"):
        load_student(tmp_path / "nowhere")

    # Valid safetensors of another shape, with the recorded hash updated: the strict load names the problem.
    from safetensors.torch import save_file

    out = student.save(tmp_path / "s2")
    other = build_model("test_resnet", 5, 1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(out / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    with pytest.raises(StudentError, match="sha256"):
        load_student(out)
    cfg.pop("weights_sha256")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StudentError, match="does not fit"):
        load_student(out)


# ------------------------------------------------------------------------------------------------------- evaluate

def test_evaluate_matches_manual(student, toy):
    res = evaluate(student, toy)
    pred = student.predict(toy)
    assert res["n"] == len(toy)
    assert res["accuracy"] == pytest.approx(float((pred == toy.labels).mean()))
    for i, c in enumerate(toy.classes):
        assert res["per_class_accuracy"][c] == pytest.approx(float((pred[toy.labels == i] == i).mean()))


def test_evaluate_matches_classes_by_name(student, toy):
    # Same images, classes listed in another order: labels are matched by name, not by index.
    perm = [2, 0, 1]
    inv = np.argsort(perm)
    shuffled = Dataset(toy.images, inv[toy.labels], [toy.classes[p] for p in perm])
    assert evaluate(student, shuffled) == evaluate(student, toy)
    bad = Dataset(toy.images, toy.labels, ["a", "b", "zebra"])
    with pytest.raises(ValueError, match="zebra"):
        evaluate(student, bad)


def test_predict_accepts_arrays(student, toy):
    assert np.array_equal(student.predict(toy.images[..., 0]), student.predict(toy))
    with pytest.raises(ValueError):
        student.predict(toy.images.astype(np.float32))


# ------------------------------------------------------------------------------------------------------- end to end

def test_end_to_end_quick_repo_footwear(request, tmp_path):
    try:
        repo = request.getfixturevalue("quick_repo")
    except pytest.FixtureLookupError:
        pytest.skip("quick_repo fixture not available")
    from hubscout.rank import rank
    from hubscout.sources import demo_target

    train = demo_target("footwear", 10, seed=0)
    test = demo_target("footwear", split="test", max_per_class=100)
    best = rank(train, repo, metrics=["ot"]).best().teacher_id
    # A narrower resnet18 and fewer steps than the defaults keep this test quick on two CPU cores.
    cfg = DistillConfig(student_kwargs={"channels": [32, 64, 128, 256]}, min_steps=120, teacher_views=4, seed=0)
    s = distill(train, repo, [best], cfg)
    acc = evaluate(load_student(s.save(tmp_path / "s")), test)["accuracy"]
    assert acc > 0.6, acc  # chance is 1/3


def test_true_class_margin_hand_example():
    from hubscout.distill._losses import true_class_margin

    q = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2]])
    y = torch.tensor([0, 0, 1])
    # 0.7 - 0.2; the teacher prefers another class: 0; a tie with another class: 0
    assert true_class_margin(q, y).tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_weighted_terms_ignore_images_the_teacher_gets_wrong():
    from hubscout.distill._losses import WeightedProtoTerm

    term = WeightedProtoTerm(centres=torch.eye(2), temperature=0.1, tau=4.0)
    t = torch.tensor([[5.0, -5.0], [5.0, -5.0]])  # the teacher says class 0 for both images
    s = torch.zeros(2, 2, requires_grad=True)
    wrong = term.loss(t, s, torch.tensor([1, 1])).item()
    assert wrong == 0.0  # wrong on both: nothing to learn from it
    right = term.loss(t, s, torch.tensor([0, 0])).item()
    assert 0 < right < term.loss(t, s).item()  # weighted by a margin below 1


@pytest.mark.parametrize("kd", ["ot+proto", "ot-w", "proto-w", "proto-ot", "probe"])
def test_distillation_candidates_train(toy, tiny_repo, student, kd):
    s = distill(toy, tiny_repo, ["t-one"], DistillConfig(**FAST, seed=3, kd=kd), device="cpu")
    assert all(v is not None and np.isfinite(v) and v >= 0 for v in s.metrics["curves"]["kd"])
    assert s.config.kd == kd
    assert not np.array_equal(s.predict_proba(toy), student.predict_proba(toy))


def test_mixup_blends_each_image_mostly_with_itself():
    from hubscout.distill._training import mix_images

    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    mixed, mix = mix_images(images, 0.4, seed=5)
    again, mix2 = mix_images(images, 0.4, seed=5)
    assert np.array_equal(mixed, again) and torch.equal(mix.partner, mix2.partner)  # seeded
    assert sorted(mix.partner.tolist()) == list(range(12))  # a permutation of the view
    lam = mix.weight.numpy()
    assert np.all((lam >= 0.5) & (lam <= 1.0))
    i, j = 3, int(mix.partner[3])
    expected = np.rint(lam[i] * images[i].astype(np.float32) + (1 - lam[i]) * images[j].astype(np.float32))
    assert np.array_equal(mixed[i], expected.astype(np.uint8))


def test_mixup_changes_training_and_keeps_ce_only_possible(toy, tiny_repo, student):
    s = distill(toy, tiny_repo, ["t-one"], DistillConfig(**FAST, seed=3, mixup=0.4))
    assert not np.array_equal(s.predict_proba(toy), student.predict_proba(toy))
    assert np.isfinite(s.metrics["curves"]["loss"]).all()
    ce = distill(toy, None, [], DistillConfig(**FAST, seed=3, mixup=0.4, ce_only=True))
    assert np.isfinite(ce.metrics["curves"]["ce"]).all()
    with pytest.raises(ValueError, match="mixup"):
        DistillConfig(mixup=-1.0)


def test_proto_ot_labels_are_the_prototype_softmax_balanced_per_class():
    from hubscout.distill._losses import ProtoOTTerm

    rng = np.random.default_rng(1)
    cos = torch.as_tensor(rng.uniform(-1, 1, (30, 3)), dtype=torch.float32)
    cos[:, 0] += 1.0  # a shifted domain: every image leans to class 0
    mass = np.array([0.5, 0.3, 0.2])
    term = ProtoOTTerm(centres=torch.eye(3), temperature=0.1, tau=4.0, class_mass=mass)
    base = cos / 0.1
    out = term.view_logits(base)
    p = torch.softmax(out.double(), dim=1)
    assert torch.allclose(p.sum(dim=1), torch.ones(30, dtype=torch.float64), atol=1e-6)  # rows are distributions
    assert np.allclose(p.mean(dim=0).numpy(), mass, atol=1e-3)  # summed, they match the class frequencies
    assert torch.softmax(base, 1).mean(0)[0] > 0.6  # whereas the plain prototype labels pile up on class 0
    shift = (out - base).double()  # one additive correction per class, the same for every image
    assert torch.allclose(shift - shift[:, :1], (shift - shift[:, :1])[0].expand_as(shift), atol=1e-3)


def test_probe_term_fits_the_teacher_features():
    from types import SimpleNamespace

    from hubscout.distill._losses import probe_term

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    feats = rng.normal(size=(30, 6)) + 3 * np.eye(3, 6)[labels]
    term = probe_term(SimpleNamespace(features=feats), labels, 3, DistillConfig(), torch.device("cpu"))
    z = ((torch.as_tensor(feats, dtype=torch.float32) - term.mean) / term.scale) @ term.W.T + term.b
    assert (z.argmax(1).numpy() == labels).mean() == 1.0
