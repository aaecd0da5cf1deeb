"""Where the images a specification is computed from come from: a training sample, the demo sources, the probe set."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from hubscout.spec._format import (PROBE_PER_CLASS, SPEC_SAMPLES_PER_CLASS, SPEC_SAMPLE_FILE, SPEC_VERSION,
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
    from hubscout.sources import SOURCES

    return np.concatenate([class_sample(name, c, per_class, seed) for name, src in SOURCES.items()
                           for c in src.classes])


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
    training classes, else from the probe set labelled by the teacher itself.

    ``view_fn(images)`` replaces the teacher's forward pass (the benchmark computes it from a shared backbone).
    """
    view_of = view_fn or (lambda imgs: teacher_view(teacher, imgs, device))
    sample = teacher.root / SPEC_SAMPLE_FILE if teacher.root is not None else None
    if sample is not None and sample.is_file():
        images, labels = read_spec_sample(sample, teacher)
        return build_specification(teacher, images, embedder, labels, view=view_of(images),
                                   source="training-sample")
    keys = zoo_class_keys(teacher)
    if keys is not None:
        parts = [_class_embeddings(k, embedder, per_class, seed, embed_cache) for k in keys]
        images = np.concatenate([p[0] for p in parts])
        emb = np.concatenate([p[1] for p in parts])
        labels = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
        return build_specification(teacher, images, embedder, labels, embeddings=emb, view=view_of(images),
                                   source="training-sample")
    images, emb = probe_set(embedder, probe_cache_dir)
    return build_specification(teacher, images, embedder, embeddings=emb, view=view_of(images),
                               source="probe-predictions")
