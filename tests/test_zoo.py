"""The offline data sources, the demo targets and the (quick) demo zoo."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from hubscout import sources
from hubscout.data import DatasetError, to_tensor
from hubscout.extract import extract
from hubscout.sources import SOURCES, TARGETS, demo_target, load_source, sample_per_class
from hubscout.teachers import Repository, read_weights
from hubscout.zoo import (QUICK_SPECS, build_demo_zoo, efficientnet_lite_state_dict, evaluate, imagenet_input_config,
                          imagenet_labels, teacher_task_data)

# ---------------------------------------------------------------------------------------------- sources

EXPECTED_SIZES = {"fashion": (60_000, 10_000), "mnist": (4_000, 1_000), "animals": (7_775, 1_941),
                  "digits": (1_438, 359)}


@pytest.mark.parametrize("name", list(SOURCES))
def test_source_shapes_and_classes(name):
    train, test = load_source(name, "train"), load_source(name, "test")
    assert (len(train), len(test)) == EXPECTED_SIZES[name]
    for ds in (train, test):
        assert ds.images.shape[1:] == (28, 28, 1) and ds.images.dtype == np.uint8
        assert ds.classes == list(SOURCES[name].classes) and ds.num_classes == 10
        counts = np.array(list(ds.class_counts().values()))
        assert counts.min() >= 0.8 * counts.max()  # about balanced (Animal-MNIST less its duplicates)
        assert 20 < ds.images.mean() < 120 and ds.images.max() == 255
    assert train.meta["source"] == name


def test_sources_have_distinct_class_names():
    names = [c for s in SOURCES.values() for c in s.classes]
    assert len(names) == len(set(names)) == 40
    assert SOURCES["animals"].classes == ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse",
                                          "sheep", "zebra")


@pytest.mark.parametrize("name", ["animals", "mnist", "digits"])
def test_source_splits_are_deterministic_and_disjoint(name):
    a, b = load_source(name, "train"), load_source(name, "train")
    assert a.sha256 == b.sha256
    test = load_source(name, "test")
    train_rows = {row.tobytes() for row in a.images}
    assert not any(row.tobytes() in train_rows for row in test.images)  # Animal-MNIST's duplicates are dropped


def test_loaders_hand_out_writable_copies():
    a = load_source("fashion", "test")
    a.images[0] = 0
    assert load_source("fashion", "test").images[0].any()


def test_sklearn_digits_are_upscaled_to_0_255():
    ds = sources.sklearn_digits()
    assert ds.images.shape == (1797, 28, 28, 1)
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_fashion_reader_refuses_a_bad_file(tmp_path, monkeypatch):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 12)  # a labels magic where images are expected
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path)
    sources._fashion_arrays.cache_clear()
    try:
        with pytest.raises(DatasetError, match="magic"):
            sources.fashion_mnist("test")
        with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
            sources.fashion_mnist("train")  # missing file
    finally:
        sources._fashion_arrays.cache_clear()


def test_unknown_source_and_split():
    with pytest.raises(ValueError, match="unknown source"):
        load_source("cifar")
    with pytest.raises(ValueError, match="split"):
        load_source("fashion", "val")


# ---------------------------------------------------------------------------------------------- demo targets

def test_targets_registry():
    assert len(TARGETS) >= 8
    for name in ("footwear", "fashion-tops", "animals-farm", "animals-wild", "digits-mnist", "handwritten"):
        assert name in TARGETS


@pytest.mark.parametrize("name", list(TARGETS))
def test_demo_target(name):
    few = demo_target(name, 5, seed=3)
    assert few.classes == TARGETS[name].classes
    assert set(few.class_counts().values()) == {5}
    assert few.images.shape[1:] == (28, 28, 1)
    assert demo_target(name, 5, seed=3).sha256 == few.sha256
    assert demo_target(name, 5, seed=4).sha256 != few.sha256
    test = demo_target(name, 5, split="test", max_per_class=20)
    assert test.classes == few.classes and min(test.class_counts().values()) >= 20
    assert few.meta["target"] == name and test.meta["split"] == "test"


def test_demo_target_test_split_is_held_out(footwear_target, footwear_test):
    assert footwear_target.classes == footwear_test.classes == ["sandal", "sneaker", "ankle-boot"]
    assert len(footwear_target) == 30 and len(footwear_test) == 300
    full = demo_target("footwear", split="test")
    assert len(full) == 3000
    assert not {r.tobytes() for r in footwear_target.images} & {r.tobytes() for r in full.images}


def test_demo_target_errors():
    with pytest.raises(ValueError, match="unknown demo target"):
        demo_target("nope", 5)
    with pytest.raises(ValueError, match="smallest class"):
        demo_target("handwritten", 500)
    with pytest.raises(ValueError, match="at least 1"):
        demo_target("footwear", 0)


# ---------------------------------------------------------------------------------------------- ImageNet teachers

def test_imagenet_labels_are_readable_and_unique():
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert labels[340] == "zebra" and labels[281] == "tabby cat" and labels[0] == "tench"
    assert "crane (bird)" in labels and "crane (machine)" in labels


def test_imagenet_input_config_from_timm():
    cfg = imagenet_input_config("tf_efficientnet_lite0")
    assert (cfg.size, cfg.channels, cfg.mean, cfg.std) == (224, 3, (0.5,) * 3, (0.5,) * 3)
    assert imagenet_input_config("tf_efficientnet_lite1").size == 240


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        return np.array(im.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC))[None]


def test_efficientnet_lite0_weights_load_by_key_pairing():
    import timm

    state = efficientnet_lite_state_dict("lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert list(state) == list(model.state_dict())
    model.load_state_dict(state, strict=True)
    model.eval()
    cfg = imagenet_input_config("tf_efficientnet_lite0")
    labels = imagenet_labels()
    with torch.inference_mode():
        probs = model(to_tensor(_grace_hopper(), cfg)).softmax(1)[0]
    top = [labels[i] for i in probs.topk(5).indices]
    print("EfficientNet-Lite0 on Grace Hopper:", top)
    assert top[0] == "military uniform"


def test_quick_zoo_imagenet_teacher(quick_repo):
    teacher = quick_repo.get("imagenet-efficientnet-lite0")
    assert teacher.arch == "tf_efficientnet_lite0" and teacher.num_classes == 1000
    assert teacher.input.size == 224 and teacher.metadata["source"] == "imagenet"
    stored = read_weights(teacher.weights_path)
    for key, value in efficientnet_lite_state_dict("lite0").items():
        assert torch.equal(stored[key], value), key
    # Not degenerate on our data: confident on some inputs, and different inputs get different top classes.
    zebras = demo_target("animals-wild", 8, split="train")
    out = extract(teacher, zebras, device="cpu")
    assert np.isfinite(out.logits).all() and out.features.shape == (32, 1280)
    top = out.probs.argmax(1)
    assert len(set(top.tolist())) >= 4
    names = teacher.labels
    for cls in range(zebras.num_classes):
        votes = np.bincount(top[zebras.labels == cls], minlength=1000)
        print(f"{zebras.classes[cls]:>9} silhouettes -> ImageNet", [names[i] for i in np.argsort(-votes)[:3]])


# ---------------------------------------------------------------------------------------------- quick zoo

def test_quick_zoo_contents(quick_repo):
    assert set(quick_repo.ids()) == {"imagenet-efficientnet-lite0"} | {s.id for s in QUICK_SPECS}
    archs = {t.arch for t in quick_repo.list()}
    assert len(archs) == len(quick_repo)  # all different architectures
    for t in quick_repo.list():
        meta = t.metadata
        for key in ("task", "source", "classes_from", "train_samples", "val_accuracy", "licence", "seed"):
            assert key in meta, (t.id, key)
        assert t.num_params > 0


MIN_ACCURACY = {"fashion-footwear": 0.8, "fashion-clothes": 0.6, "animals-all": 0.55, "mnist-digits": 0.9}


@pytest.mark.parametrize("teacher_id", [s.id for s in QUICK_SPECS])
def test_quick_zoo_teacher_accuracy(quick_repo, teacher_id):
    teacher = quick_repo.get(teacher_id)
    test = sample_per_class(teacher_task_data(teacher, "test"), 200, seed=1)
    assert test.classes == teacher.labels
    model = teacher.load_model("cpu")
    accuracy = evaluate(model, test, teacher.input)
    print(f"{teacher_id}: {accuracy:.3f} on {len(test)} test images (metadata {teacher.metadata['val_accuracy']})")
    assert accuracy >= MIN_ACCURACY[teacher_id]
    assert abs(accuracy - teacher.metadata["val_accuracy"]) < 0.08
    assert teacher.metadata["train_samples"] <= 10 * 500


def _leep(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LEEP (Nguyen et al. 2020): log-likelihood of the labels under the teacher's soft source-to-target map."""
    joint = np.stack([probs[labels == c].sum(0) for c in range(num_classes)], 1) / len(labels)  # K×C
    cond = joint / joint.sum(1, keepdims=True)
    return float(np.mean(np.log((probs @ cond)[np.arange(len(labels)), labels] + 1e-12)))


def test_quick_zoo_ranks_the_footwear_teacher_first(quick_repo, footwear_target):
    scores = {}
    for teacher in quick_repo.list():
        out = extract(teacher, footwear_target, device="cpu")
        scores[teacher.id] = _leep(out.probs, footwear_target.labels, footwear_target.num_classes)
    ranking = sorted(scores, key=scores.get, reverse=True)
    print("LEEP on footwear, 10 shots:", {k: round(scores[k], 3) for k in ranking})
    assert ranking[0] == "fashion-footwear"


def test_build_is_deterministic(tmp_path, monkeypatch):
    from hubscout import zoo

    spec = zoo.QUICK_SPECS[3]
    tiny = zoo.TeacherSpec(spec.id, spec.task, spec.parts, spec.arch, per_class=20, epochs=1)
    monkeypatch.setattr(zoo, "QUICK_SPECS", [tiny])
    monkeypatch.setattr(zoo, "add_imagenet_teacher", lambda repo, variant: None)
    a = build_demo_zoo(tmp_path / "a", quick=True).get(spec.id)
    b = build_demo_zoo(tmp_path / "b", quick=True).get(spec.id)
    assert a.weights_sha256 == b.weights_sha256
    assert isinstance(Repository(tmp_path / "a"), Repository) and len(Repository(tmp_path / "a")) == 1


def test_efficientnet_lite2_loads_like_lite0():
    """Lite2 (the ranking benchmark's third ImageNet teacher) comes from its own package, mapped the same way."""
    import timm

    state = efficientnet_lite_state_dict("lite2")
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    model.load_state_dict(state, strict=True)
    model.eval()
    cfg = imagenet_input_config("tf_efficientnet_lite2")
    assert cfg.size == 260
    with torch.inference_mode():
        probs = model(to_tensor(_grace_hopper(), cfg)).softmax(1)[0]
    top = [imagenet_labels()[i] for i in probs.topk(5).indices]
    assert "military uniform" in top[:2], top


def test_label_noise_moves_the_asked_fraction_to_other_classes():
    from hubscout.zoo import noisy_labels

    y = np.repeat(np.arange(4), 50)
    z = noisy_labels(y, 4, 0.4, seed=3)
    assert np.sum(z != y) == 80 and z.min() >= 0 and z.max() <= 3
    assert np.array_equal(z, noisy_labels(y, 4, 0.4, seed=3)) and np.array_equal(y, np.repeat(np.arange(4), 50))


def test_parallel_build_gives_the_weights_of_a_one_thread_build(tmp_path, monkeypatch):
    """Two worker processes (one torch thread each) train the very teachers a one-process, one-thread build
    does, and report each teacher as it is stored."""
    from hubscout import zoo

    tiny = [zoo.TeacherSpec(s.id, s.task, s.parts, s.arch, per_class=12, epochs=1) for s in zoo.QUICK_SPECS[2:4]]
    monkeypatch.setattr(zoo, "QUICK_SPECS", tiny)
    monkeypatch.setattr(zoo, "add_imagenet_teacher", lambda repo, variant: None)
    seen = []
    par = build_demo_zoo(tmp_path / "par", quick=True, workers=2, on_teacher=lambda *a: seen.append(a))
    one = build_demo_zoo(tmp_path / "one", quick=True, workers=1, num_threads=1)
    assert sorted(par.ids()) == sorted(s.id for s in tiny) == sorted(one.ids())
    for s in tiny:
        assert par.get(s.id).weights_sha256 == one.get(s.id).weights_sha256
    assert [a[1:3] for a in seen] == [(1, 3), (2, 3), (3, 3)]
    assert {a[0] for a in seen} == {"imagenet-efficientnet-lite0", *(s.id for s in tiny)} and all(a[3] >= 0 for a in seen)


# ---------------------------------------------------------------------------------- committed small teachers

def _no_training(monkeypatch):
    """Training and the ImageNet teachers out of the way: what is built was restored."""
    from hubscout import zoo

    trained = []
    monkeypatch.setattr(zoo, "train_teacher", lambda repo, spec, seed=0, **kw: trained.append(spec.id))
    monkeypatch.setattr(zoo, "add_imagenet_teacher", lambda repo, variant: None)
    return trained


def test_the_full_zoo_restores_its_small_teachers_with_their_pinned_hashes(tmp_path, monkeypatch):
    """The first start's small teachers come from the committed safetensors: every file hashes to its pin, its
    teacher.json is the spec's, and the network is the one that was trained (it scores its own recorded held-out
    accuracy again)."""
    from hubscout import zoo
    from hubscout.sources import task_data
    from hubscout.teachers import file_sha256

    trained = _no_training(monkeypatch)
    seen = []
    repo = build_demo_zoo(tmp_path / "zoo", workers=1, on_teacher=lambda *a: seen.append(a[:3]))
    assert trained == []
    assert sorted(repo.ids()) == sorted(s.id for s in zoo.FULL_SPECS) == sorted(zoo.DEMO_TEACHER_SHA256)
    # Restored first (seconds), then the ImageNet teachers: the progress counts all fourteen.
    assert [b for _, b, _ in seen] == list(range(1, 15)) and {t for _, _, t in seen} == {14}
    assert [a for a, _, _ in seen[:12]] == [s.id for s in zoo.FULL_SPECS]
    for i, spec in enumerate(zoo.FULL_SPECS):
        t = repo.get(spec.id)
        assert t.weights_sha256 == zoo.DEMO_TEACHER_SHA256[spec.id] == file_sha256(t.weights_path)
        assert (t.arch, t.labels, t.input.size, t.input.channels) == (spec.arch, spec.classes, spec.size,
                                                                       spec.channels)
        assert t.metadata["seed"] == 2 + i and t.metadata["trained_here"] is True
    for tid in ("fashion-footwear", "mnist-low", "animals-wild"):  # a cheap few: the whole held-out split each
        t, spec = repo.get(tid), next(s for s in zoo.FULL_SPECS if s.id == tid)
        val = sample_per_class(task_data(spec.parts, "test"), t.metadata["val_samples"] // len(spec.classes),
                               seed=t.metadata["seed"])
        acc = evaluate(t.load_model(), val, t.input)
        assert abs(acc - t.metadata["val_accuracy"]) <= 0.005, (tid, acc, t.metadata["val_accuracy"])


def test_a_committed_teacher_that_does_not_check_out_is_trained(tmp_path, monkeypatch):
    """A weights file that is not its pin (even with a matching teacher.json), or a teacher.json that no longer
    matches its TeacherSpec, is not restored: that teacher is trained, the others restored."""
    import json
    import shutil

    from hubscout import zoo
    from hubscout.teachers import file_sha256

    committed = tmp_path / "committed"
    shutil.copytree(zoo.committed_teachers_dir(), committed)
    w = committed / "fashion-footwear" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    w.write_bytes(bytes(data))
    meta = json.loads((committed / "fashion-footwear" / "teacher.json").read_text())
    meta["weights_sha256"] = file_sha256(w)  # edited together: the pin still refuses it
    (committed / "fashion-footwear" / "teacher.json").write_text(json.dumps(meta))
    meta = json.loads((committed / "mnist-low" / "teacher.json").read_text())
    meta["metadata"]["epochs"] += 1  # the spec changed since these weights were trained
    (committed / "mnist-low" / "teacher.json").write_text(json.dumps(meta))
    shutil.rmtree(committed / "animals-all")

    trained = _no_training(monkeypatch)
    repo = build_demo_zoo(tmp_path / "zoo", workers=1, committed=committed)
    assert sorted(trained) == ["animals-all", "fashion-footwear", "mnist-low"]
    assert sorted(repo.ids()) == sorted(set(zoo.DEMO_TEACHER_SHA256) - set(trained))
    assert all(repo.get(t).weights_sha256 == zoo.DEMO_TEACHER_SHA256[t] for t in repo.ids())
    assert not list((tmp_path / "zoo").glob(".restore-*"))


def test_restore_off_and_other_seeds_train_every_teacher(tmp_path, monkeypatch):
    from hubscout import zoo

    trained = _no_training(monkeypatch)
    build_demo_zoo(tmp_path / "a", workers=1, restore=False)
    assert sorted(trained) == sorted(s.id for s in zoo.FULL_SPECS)
    trained.clear()
    build_demo_zoo(tmp_path / "b", workers=1, seed=1)  # only seed 0 was committed
    assert sorted(trained) == sorted(s.id for s in zoo.FULL_SPECS)
