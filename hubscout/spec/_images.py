"""Where the images a specification is computed from come from: a training sample, the demo sources, the probe set."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from hubscout.spec._format import (PROBE_PER_CLASS, PROBE_SOURCE, SPEC_SAMPLES_PER_CLASS, SPEC_SAMPLE_FILE, SPEC_VERSION,
                                   Specification, TeacherView, build_specification, teacher_view)
from hubscout.spec._reference import REFERENCE_DIM, REFERENCE_NAME, ReferenceEmbedder


@lru_cache(maxsize=4)
def _train_split(source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from hubscout.sources import load_source

    ds = load_source(source, "train")
    ds.images.setflags(write=False)
    return ds.images, ds.labels, tuple(ds.classes)


def class_sample(source: str, cls: str, n: int = SPEC_SAMPLES_PER_CLASS, seed: int = 0) -> np.ndarray:
    """``n`` training images of one class of a demo source, chosen by (source, class, seed) alone: every teacher
    that knows the class describes it with the same images, whatever else it knows."""
    images, labels, classes = _train_split(source)
    idx = np.flatnonzero(labels == classes.index(cls))
    rng = np.random.default_rng([seed, *source.encode(), *cls.encode()])
    pick = np.sort(rng.choice(idx, min(n, len(idx)), replace=False))
    return images[pick]


def zoo_class_keys(teacher) -> list[tuple[str, str]] | None:
    """(source, class) of each of a demo-zoo teacher's labels, in label order; None for any other teacher."""
    from hubscout.sources import SOURCES

    parts = teacher.metadata.get("classes_from")
    if not isinstance(parts, dict) or not parts or not all(src in SOURCES for src in parts):
        return None
    keys = [(src, str(c)) for src, cls in parts.items() for c in cls]
    if [c for _, c in keys] != list(teacher.labels) or any(c not in SOURCES[s].classes for s, c in keys):
        return None
    return keys


EmbedCache = dict  # (source, class) -> reference embeddings of class_sample(source, class)


def _class_embeddings(key: tuple[str, str], embedder, per_class: int, seed: int, cache: EmbedCache | None):
    ck = (key, per_class, seed)
    if cache is not None and ck in cache:
        return cache[ck]
    images = class_sample(*key, n=per_class, seed=seed)
    emb = embedder.embed(images)
    if cache is not None:
        cache[ck] = (images, emb)
    return images, emb


def probe_images(per_class: int = PROBE_PER_CLASS, seed: int = 0) -> np.ndarray:
    """The fixed probe set (grey, 28×28): ``per_class`` images of every class of every demo source."""
    return np.concatenate(_probe_parts(per_class, seed))


def _probe_parts(per_class: int, seed: int) -> list[np.ndarray]:
    from hubscout.sources import SOURCES

    return [class_sample(name, c, per_class, seed) for name, src in SOURCES.items() for c in src.classes]


@lru_cache(maxsize=2)
def probe_labels(per_class: int = PROBE_PER_CLASS, seed: int = 0) -> np.ndarray:
    """The probe images' classes (index of the (source, class) pair, in :func:`probe_images` order)."""
    sizes = [len(x) for x in _probe_parts(per_class, seed)]
    return np.repeat(np.arange(len(sizes)), sizes)


_probe_memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def probe_set(embedder: "ReferenceEmbedder", cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, reference embeddings) of the probe set; embedded once per process, and once per ``cache_dir``."""
    key = f"{REFERENCE_NAME}-v{SPEC_VERSION}-{PROBE_PER_CLASS}"
    if key in _probe_memo:
        return _probe_memo[key]
    images = probe_images()
    path = Path(cache_dir) / f"probe-{key}.npy" if cache_dir is not None else None
    emb = None
    if path is not None and path.is_file():
        try:
            emb = np.load(path, allow_pickle=False)
            if emb.shape != (len(images), REFERENCE_DIM):
                emb = None
        except (OSError, ValueError):
            emb = None
    if emb is None:
        emb = embedder.embed(images)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, emb)
            tmp.replace(path)
    _probe_memo[key] = (images, emb)
    return images, emb


_probe_class_memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def probe_classes(embedder: "ReferenceEmbedder", cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prototypes P×d, yardsticks P) of the probe set's classes in the reference embedding. A target class c is
    covered by probe class p when spread_c · cos(μ_c, p) / yardstick_p ≥ ``COVERAGE_RATIO``, the ratio of
    ``SpecIndex.covered`` with p's spread replaced by its within-class cosine over distinct image pairs divided by
    its spread: a class's spread from n images counts its n self-pairs (cosine 1), which at the probe set's 10
    images a class overstates its tightness by (1 − ρ²)/n and left same-class targets uncovered."""
    from hubscout.spec._format import class_statistics

    key = f"{REFERENCE_NAME}-v{SPEC_VERSION}-{PROBE_PER_CLASS}"
    if key not in _probe_class_memo:
        _, emb = probe_set(embedder, cache_dir)
        labels = probe_labels()
        protos, _, spread = class_statistics(emb, np.eye(int(labels.max()) + 1, dtype=np.float32)[labels])
        n = np.bincount(labels).astype(np.float64)
        s2 = spread.astype(np.float64) ** 2
        within = np.clip((n * s2 - 1.0) / np.maximum(n - 1.0, 1.0), 1e-6, None)  # mean cosine of distinct pairs
        _probe_class_memo[key] = (protos, (within / np.maximum(spread, 1e-6)).astype(np.float32))
    return _probe_class_memo[key]


def read_spec_sample(path: str | Path, teacher) -> tuple[np.ndarray, np.ndarray]:
    """An uploaded labelled sample (a dataset file whose classes are teacher labels) → (images, label indices
    into the teacher's labels)."""
    from hubscout.data import DatasetError, load_dataset

    ds = load_dataset(path)
    index = {c: i for i, c in enumerate(teacher.labels)}
    unknown = [c for c in ds.classes if c not in index]
    if unknown:
        raise DatasetError(f"spec sample classes not among the teacher's labels: {', '.join(unknown[:10])}")
    remap = np.array([index[c] for c in ds.classes], dtype=np.int64)
    return ds.images, remap[ds.labels]


def specification_for(teacher, embedder: "ReferenceEmbedder", per_class: int = SPEC_SAMPLES_PER_CLASS,
                      seed: int = 0, *, embed_cache: EmbedCache | None = None, device=None,
                      probe_cache_dir: str | Path | None = None,
                      view_fn: Callable[[np.ndarray], TeacherView] | None = None) -> Specification:
    """The specification of ``teacher``: from its uploaded training sample, else (demo zoo) from a sample of its
    training classes, else from the probe set labelled by the teacher itself. Every specification also holds the
    teacher's feature geometry over the probe classes (``probe_gram``), from its features on the probe set: one
    more pass over its 400 small images, shared with the description when that comes from the probe set.

    ``view_fn(images)`` replaces the teacher's forward pass (the benchmark computes it from a shared backbone).
    """
    view_of = view_fn or (lambda imgs: teacher_view(teacher, imgs, device))
    probe_view = None

    def probe() -> tuple[np.ndarray, np.ndarray]:
        nonlocal probe_view
        if probe_view is None:
            probe_view = view_of(probe_images())
        return np.asarray(probe_view.features), probe_labels()

    sample = teacher.root / SPEC_SAMPLE_FILE if teacher.root is not None else None
    if sample is not None and sample.is_file():
        images, labels = read_spec_sample(sample, teacher)
        return build_specification(teacher, images, embedder, labels, view=view_of(images),
                                   source="training-sample", probe=probe())
    keys = zoo_class_keys(teacher)
    if keys is not None:
        parts = [_class_embeddings(k, embedder, per_class, seed, embed_cache) for k in keys]
        images = np.concatenate([p[0] for p in parts])
        emb = np.concatenate([p[1] for p in parts])
        labels = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
        return build_specification(teacher, images, embedder, labels, embeddings=emb, view=view_of(images),
                                   source="training-sample", probe=probe())
    images, emb = probe_set(embedder, probe_cache_dir)
    gram = probe()
    return build_specification(teacher, images, embedder, embeddings=emb, view=probe_view, source=PROBE_SOURCE,
                               probe=gram)
