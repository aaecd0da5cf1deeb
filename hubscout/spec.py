"""Teacher specifications: find the right teachers without running them.

A specification is computed once, when a teacher is added, from one forward pass of the teacher over a few
images per class. It holds two descriptions of the teacher:

* its *data*, in a shared reference embedding (ImageNet EfficientNet-Lite0 features at 112 px, the same model for
  every teacher): a prototype and a mass per class, i.e. a per-class reduced kernel mean embedding in the sense
  of the learnware paradigm (Zhou & Tan, "Learnware: small models do big", 2024; Wu et al., "Model reuse with
  reduced kernel mean embedding specification", TKDE 2021);
* its *model*, in its own terms, on the same images: its confusion (what it predicts on each class's images)
  and its geometry (the cosine between each classifier row and its own mean feature of each class), the two
  things exact OT reads off a teacher on a target (``hubscout.ot``), here on the teacher's own classes.

Where the images come from, in order of preference (:func:`specification_for`):

1. ``training-sample``: a labelled sample of the teacher's training data stored beside it (``spec-sample.npz``,
   uploaded with the teacher), or, for the demo zoo, ``SPEC_SAMPLES_PER_CLASS`` images of each of its classes;
2. ``probe-predictions``: a fixed probe set (10 images of every class of every demo source), labelled by the
   teacher itself: a probe image counts towards a class with the probability the teacher gives it, and classes
   that receive less than one image's worth are left out (the probe set says nothing about them).

At ranking time the target set is embedded once with the reference model and every teacher is scored from its
specification alone (:data:`SCORE_METHODS`; lower is better). The default, ``gmm-ot``, emulates exact OT: each
target class becomes a mixture over the teacher's classes (the posterior of the teacher's class prototypes),
which tells what the teacher would predict on it (through its confusion) and how its classifier rows would meet
it (through its geometry), hence the cost ``-log softmax_c(cos / 0.1) / log C`` of ``cost_prototype_softmax``.
All teachers are stacked in one :class:`SpecIndex`, so 1,000 teachers cost a few matrix products.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches
from hubscout.ot import DEFAULT_COST

REFERENCE_ARCH = "tf_efficientnet_lite0"
# Teachers here see 28-32 px images; 112 px keeps the reference features meaningful at a quarter of 224's cost.
REFERENCE_SIZE = 112
REFERENCE_NAME = f"{REFERENCE_ARCH}@{REFERENCE_SIZE}"
REFERENCE_DIM = 1280
# Bumped whenever what a specification holds or how it is computed changes: older ones are recomputed.
SPEC_VERSION = 2
SPEC_FILE = "spec.npz"
SPEC_SAMPLE_FILE = "spec-sample.npz"
SPEC_SAMPLES_PER_CLASS = 50
PROBE_PER_CLASS = 10

# The exact OT's cost temperature (``cost_prototype_softmax``) and the mixture posterior's temperature.
COST_TEMPERATURE = 0.1
# Chosen on the benchmark's dev targets (seed 1) from {0.005, 0.01, 0.02, 0.05, 0.1}: see docs/method.md.
POSTERIOR_TEMPERATURE = 0.02
# The score that emulates exact OT under each ground cost: the shortlist must keep what the exact ranking, run
# with the library's default cost, puts first.
METHOD_FOR_COST = {"proto-softmax": "gmm-ot", "joint": "gmm-joint"}
DEFAULT_METHOD = METHOD_FOR_COST[DEFAULT_COST]


class ReferenceEmbedder:
    """The shared embedding: pooled features of the ImageNet EfficientNet-Lite0 shipped with the package."""

    name = REFERENCE_NAME

    def __init__(self, device: str | torch.device | None = None, size: int = REFERENCE_SIZE):
        from hubscout.extract import default_device
        from hubscout.teachers import InputConfig, build_model
        from hubscout.zoo import efficientnet_lite_state_dict, imagenet_input_config

        self.device = torch.device(device) if device is not None else default_device()
        base = imagenet_input_config(REFERENCE_ARCH)
        self.input = InputConfig(size, 3, base.mean, base.std)
        model = build_model(REFERENCE_ARCH, 1000, 3)
        model.load_state_dict(efficientnet_lite_state_dict("lite0"))
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """L2-normalised reference features (N×1280, float32) of uint8 images N×H×W×C."""
        out = []
        for x in iter_batches(images, self.input, batch_size):
            f = self.model.forward_head(self.model.forward_features(x.to(self.device)), pre_logits=True)
            out.append(torch.nn.functional.normalize(f.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, REFERENCE_DIM), np.float32)


# ------------------------------------------------------------------------------------------ the specification

SPARSE_TOP = 32  # per class, the entries of its confusion and geometry rows kept (all of them up to 32 classes)
PROBE_MIN_IMAGES = 1.0  # a probe-described class needs at least one probe image's worth of probability


@dataclass
class Specification:
    """A teacher's description for search.

    *Data*, in the shared reference embedding: the prototypes (R×d, unit rows) of the R ≤ K classes it describes
    (``rows``, indices into ``labels``) and their masses. *Model*, in the teacher's own terms, on the same images:
    its confusion (row j: the mean probability it gives each class on images of class j) and its geometry (row k:
    the cosine between its classifier row k and its own mean feature of class j), both over the described
    classes, stored as each row's ``SPARSE_TOP`` largest entries (``*_idx`` into the described classes,
    ``*_val``) plus, for the geometry, the mean of the rest. These are what exact OT computes on a target, here
    on the teacher's own classes; the score maps target classes onto them through the reference embedding.
    """

    teacher_id: str
    weights_sha256: str
    labels: list[str]
    rows: np.ndarray
    prototypes: np.ndarray
    class_mass: np.ndarray
    conf_idx: np.ndarray
    conf_val: np.ndarray
    geo_idx: np.ndarray
    geo_val: np.ndarray
    geo_rest: np.ndarray
    reference: str = REFERENCE_NAME
    n_samples: int = 0
    source: str = "training-sample"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        R = len(self.rows)
        ok = (self.prototypes.ndim == 2 and self.prototypes.shape[0] == R and self.class_mass.shape == (R,)
              and R >= 1 and self.conf_idx.shape == self.conf_val.shape == self.geo_idx.shape == self.geo_val.shape
              and self.conf_idx.ndim == 2 and self.conf_idx.shape[0] == R and self.geo_rest.shape == (R,)
              and (R == 0 or (0 <= int(np.min(self.rows)) and int(np.max(self.rows)) < len(self.labels)))
              and (self.conf_idx.size == 0 or (0 <= int(self.conf_idx.min()) and int(self.conf_idx.max()) < R
                                               and 0 <= int(self.geo_idx.min()) and int(self.geo_idx.max()) < R)))
        if not ok:
            raise ValueError(f"specification of {self.teacher_id}: inconsistent shapes (R={R}, "
                             f"prototypes {self.prototypes.shape}, confusion {self.conf_idx.shape})")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def self_agreement(self) -> np.ndarray:
        """Per described class, the probability the teacher gives it on its own images (confusion diagonal)."""
        hit = self.conf_idx == np.arange(len(self.rows))[:, None]
        return (self.conf_val * hit).sum(1)

    def is_current(self, weights_sha256: str | None = None) -> bool:
        """Made by this code, in this reference embedding (and for these weights, when given)."""
        return (self.version == SPEC_VERSION and self.reference == REFERENCE_NAME
                and (weights_sha256 is None or self.weights_sha256 == weights_sha256))

    def to_bytes(self) -> bytes:
        meta = {"teacher_id": self.teacher_id, "weights_sha256": self.weights_sha256, "labels": self.labels,
                "reference": self.reference, "n_samples": self.n_samples, "source": self.source,
                "version": self.version}
        idx = np.uint16 if len(self.rows) < 2 ** 16 else np.int32
        # float16 halves the size (a 10-class teacher: 26 kB) and moves no cosine by more than 1e-3.
        return pack_arrays(meta, {
            "rows": self.rows.astype(np.int32), "prototypes": self.prototypes.astype(np.float16),
            "class_mass": self.class_mass.astype(np.float32), "conf_idx": self.conf_idx.astype(idx),
            "conf_val": self.conf_val.astype(np.float16), "geo_idx": self.geo_idx.astype(idx),
            "geo_val": self.geo_val.astype(np.float16), "geo_rest": self.geo_rest.astype(np.float16)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Specification":
        """Never unpickles. Raises ValueError on anything that is not a specification of this version. The
        arrays are read-only views of ``data`` (no copy: 1,000 specifications decode in milliseconds)."""
        meta, a = unpack_arrays(data)
        try:
            version = int(meta.get("version", 1))
            if version != SPEC_VERSION:
                raise ValueError(f"specification version {version}, this code reads {SPEC_VERSION}")
            return cls(teacher_id=str(meta["teacher_id"]), weights_sha256=str(meta["weights_sha256"]),
                       labels=[str(x) for x in meta["labels"]], rows=a["rows"], prototypes=a["prototypes"],
                       class_mass=a["class_mass"], conf_idx=a["conf_idx"], conf_val=a["conf_val"],
                       geo_idx=a["geo_idx"], geo_val=a["geo_val"], geo_rest=a["geo_rest"],
                       reference=str(meta.get("reference", "")), n_samples=int(meta.get("n_samples", 0)),
                       source=str(meta.get("source", "")), version=version)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a teacher specification: {e}") from None


_MAGIC = b"HUBSPEC\x00"
_DTYPES = {"float16", "float32", "int32", "uint16"}


def pack_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A small self-describing container: magic, a JSON header (meta; each array's dtype, shape and offset),
    then the raw little-endian arrays, 8-byte aligned."""
    layout, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise ValueError(f"{name}: dtype {arr.dtype} not storable")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        layout.append([name, arr.dtype.name, list(arr.shape), offset])
        pad = (-len(raw)) % 8
        chunks.append(raw + b"\x00" * pad)
        offset += len(raw) + pad
    header = json.dumps({"meta": meta, "arrays": layout}).encode()
    header += b" " * ((-len(header) - len(_MAGIC) - 4) % 8)
    return _MAGIC + len(header).to_bytes(4, "little") + header + b"".join(chunks)


def unpack_arrays(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Inverse of :func:`pack_arrays`; every dtype, shape and offset is checked against the buffer."""
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("wrong magic")
        n = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "little")
        body = len(_MAGIC) + 4 + n
        header = json.loads(data[len(_MAGIC) + 4:body].decode())
        arrays = {}
        for name, dtype, shape, offset in header["arrays"]:
            if dtype not in _DTYPES or not all(isinstance(x, int) and x >= 0 for x in shape):
                raise ValueError(f"bad array {name}")
            dt = np.dtype(dtype).newbyteorder("<")
            count = int(np.prod(shape)) if shape else 1
            start = body + int(offset)
            if offset < 0 or start + count * dt.itemsize > len(data):
                raise ValueError(f"array {name} runs past the end")
            arrays[str(name)] = np.frombuffer(data, dtype=dt, count=count, offset=start).reshape(shape)
        return header["meta"], arrays
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a teacher specification: {e}") from None


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_prototypes(embeddings: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted class means (K×d, unit rows) and class masses from N×d embeddings and N×K weights."""
    mass = weights.sum(axis=0)
    protos = weights.T @ embeddings / np.maximum(mass[:, None], 1e-12)
    return _unit_rows(protos).astype(np.float32), (mass / max(mass.sum(), 1e-12)).astype(np.float32)


def _top_entries(m: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``top`` largest entries (indices, values) and the mean of the others (0 when none)."""
    R = m.shape[1]
    t = min(top, R)
    idx = np.argsort(-m, axis=1, kind="stable")[:, :t]
    val = np.take_along_axis(m, idx, axis=1)
    rest = (m.sum(1) - val.sum(1)) / max(R - t, 1) if R > t else np.zeros(m.shape[0])
    return idx, val, rest


@dataclass
class TeacherView:
    """What a specification needs from the teacher on its spec images: pooled features (N×D), softmax (N×K) and
    its classifier rows (K×D)."""

    features: np.ndarray
    probs: np.ndarray
    classifier_weight: np.ndarray


def build_specification(teacher, images: np.ndarray | None, embedder: "ReferenceEmbedder | None",
                        labels: np.ndarray | None = None, *, embeddings: np.ndarray | None = None,
                        view: TeacherView | None = None, device=None, source: str | None = None) -> Specification:
    """Specification of ``teacher`` from a sample of images (their reference ``embeddings`` and the teacher's
    ``view`` of them may be given when already computed).

    With ``labels`` (indices into the teacher's labels; -1 = unlabelled) a class's images are its labelled ones
    and the classes without any are left out. Without labels (``probe-predictions``) every image counts towards
    every class with the probability the teacher gives it, and only classes with at least ``PROBE_MIN_IMAGES``
    images' worth of probability are described: of the others the probe set says nothing.
    """
    emb = embeddings if embeddings is not None else embedder.embed(images)
    view = view if view is not None else teacher_view(teacher, images, device)
    probs = np.asarray(view.probs, dtype=np.float64)
    K = teacher.num_classes
    if probs.shape != (len(emb), K) or view.features.shape[0] != len(emb):
        raise ValueError(f"teacher {teacher.id}: outputs {probs.shape} for {len(emb)} images, {K} classes")
    if labels is not None:
        labels = np.asarray(labels)
        weights = np.zeros((len(emb), K))
        known = labels >= 0
        weights[np.flatnonzero(known), labels[known]] = 1.0
        rows = np.flatnonzero(weights.sum(0) > 0)
    else:
        weights = probs
        mass = probs.sum(0)
        rows = np.flatnonzero(mass >= PROBE_MIN_IMAGES)
        if not len(rows):
            rows = np.array([int(np.argmax(mass))])
    if not len(rows):
        raise ValueError(f"teacher {teacher.id}: no class of it has an image in the specification sample")
    w = weights[:, rows]
    counts = w.sum(0)
    protos, mass = class_prototypes(emb, w)
    # Confusion over the described classes: mass sent elsewhere stays out (rows may sum to less than 1).
    conf = (w.T @ probs[:, rows]) / counts[:, None]
    feat_means = (w.T @ np.asarray(view.features, np.float64)) / counts[:, None]
    geo = _unit_rows(np.asarray(view.classifier_weight, np.float64)[rows]) @ _unit_rows(feat_means).T
    c_idx, c_val, _ = _top_entries(conf, SPARSE_TOP)
    g_idx, g_val, g_rest = _top_entries(geo, SPARSE_TOP)
    return Specification(teacher.id, teacher.weights_sha256, list(teacher.labels), rows.astype(np.int64), protos,
                         (counts / counts.sum()).astype(np.float32) if labels is not None else
                         (counts / len(emb)).astype(np.float32),
                         c_idx, c_val.astype(np.float32), g_idx, g_val.astype(np.float32), g_rest.astype(np.float32),
                         REFERENCE_NAME, len(emb),
                         source or ("training-sample" if labels is not None else "probe-predictions"))


@torch.inference_mode()
def teacher_view(teacher, images: np.ndarray, device=None, batch_size: int = 64) -> TeacherView:
    """One forward pass of the teacher over the spec images."""
    from hubscout.extract import classifier_of, default_device, features_and_logits

    device = torch.device(device) if device is not None else default_device()
    model = teacher.load_model(device)
    feats, probs = [], []
    for x in iter_batches(images, teacher.input, batch_size):
        f, z = features_and_logits(model, x.to(device))
        feats.append(f.float().cpu().numpy())
        probs.append(torch.softmax(z.float(), dim=1).cpu().numpy())
    W = classifier_of(model).weight.detach().float().cpu().numpy()
    if not feats:
        return TeacherView(np.zeros((0, W.shape[1]), np.float32), np.zeros((0, teacher.num_classes), np.float32), W)
    return TeacherView(np.concatenate(feats), np.concatenate(probs), W)


# ------------------------------------------------------------------------------------ where the images come from

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


# ---------------------------------------------------------------------------------------------- the target

@dataclass
class TargetEmbedding:
    """The target set seen by the reference model once: its class prototypes (C×d) and class names."""

    prototypes: np.ndarray
    classes: list[str]
    embed_s: float = 0.0
    n_samples: int = 0

    def to_bytes(self) -> bytes:
        return pack_arrays({"classes": self.classes, "n_samples": self.n_samples, "reference": REFERENCE_NAME},
                           {"prototypes": self.prototypes.astype(np.float32)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "TargetEmbedding":
        meta, a = unpack_arrays(data)
        if meta.get("reference") != REFERENCE_NAME:
            raise ValueError("target embedding of another reference model")
        return cls(a["prototypes"], [str(c) for c in meta["classes"]], 0.0, int(meta["n_samples"]))


def embed_target(dataset: Dataset, embedder: ReferenceEmbedder) -> TargetEmbedding:
    t0 = time.perf_counter()
    emb = embedder.embed(dataset.images)
    onehot = np.eye(dataset.num_classes, dtype=np.float32)[dataset.labels]
    protos, _ = class_prototypes(emb, onehot)
    return TargetEmbedding(protos, list(dataset.classes), time.perf_counter() - t0, len(dataset))


# ---------------------------------------------------------------------------------------------- scoring

@dataclass
class SpecIndex:
    """Many specifications stacked for scoring in one pass: R = all their described classes. Prototypes (R×d),
    log class masses, each teacher's first row, and two sparse R×R matrices over the stacked classes: the
    transposed confusion (``conf_t[k, j]`` = confusion[j, k]) and the geometry minus its row's rest value."""

    teacher_ids: list[str]
    prototypes: np.ndarray
    log_mass: np.ndarray
    starts: np.ndarray
    conf_t: "object"
    geo: "object"
    geo_rest: np.ndarray
    agreement: np.ndarray
    labels: list[list[str]] = field(default_factory=list)

    @classmethod
    def build(cls, specs: Sequence[Specification]) -> "SpecIndex":
        from scipy import sparse

        sizes = np.array([len(s.rows) for s in specs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(specs) else sizes
        R = int(sizes.sum())
        if not len(specs):
            empty = sparse.csr_matrix((0, 0))
            return cls([], np.zeros((0, REFERENCE_DIM), np.float32), np.zeros(0), starts, empty, empty,
                       np.zeros(0), np.zeros(0), [])
        protos = np.empty((R, specs[0].prototypes.shape[1]), np.float32)
        for s, o in zip(specs, starts):
            protos[o:o + len(s.rows)] = s.prototypes
        mass = np.concatenate([s.class_mass for s in specs]).astype(np.float64)

        def stacked(idx_name: str, val_name: str, minus=None):
            idx = [getattr(s, idx_name) for s in specs]
            val = [getattr(s, val_name) for s in specs]
            widths = np.array([i.shape[1] for i in idx])
            r = np.concatenate([np.repeat(np.arange(len(s.rows)) + o, w) for s, o, w in zip(specs, starts, widths)])
            c = np.concatenate([i.reshape(-1) + o for i, o in zip(idx, starts)])
            v = np.concatenate([x.reshape(-1) for x in val]).astype(np.float64)
            if minus is not None:
                v = v - minus[r]
            return r, c, v

        geo_rest = np.concatenate([s.geo_rest for s in specs]).astype(np.float64)
        r, c, v = stacked("conf_idx", "conf_val")
        agreement = np.zeros(R)
        np.add.at(agreement, r[r == c], v[r == c])
        conf_t = sparse.csr_matrix((v, (c, r)), shape=(R, R))
        r, c, v = stacked("geo_idx", "geo_val", minus=geo_rest)
        geo = sparse.csr_matrix((v, (r, c)), shape=(R, R))
        return cls([s.teacher_id for s in specs], protos, np.log(np.maximum(mass, 1e-8)), starts, conf_t, geo,
                   geo_rest, np.clip(agreement, 0.0, 1.0), [list(s.labels) for s in specs])

    def __len__(self) -> int:
        return len(self.teacher_ids)

    def scores(self, target: TargetEmbedding, method: str = DEFAULT_METHOD,
               temperature: float = POSTERIOR_TEMPERATURE) -> np.ndarray:
        if method not in SCORE_METHODS:
            raise ValueError(f"unknown specification score {method!r}; choose from {', '.join(SCORE_METHODS)}")
        if not len(self):
            return np.zeros(0)
        return SCORE_METHODS[method](self, target, temperature)


def _segment_max(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(x, starts, axis=0)


def _segment_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, starts, axis=0)


def _segment_ids(index: SpecIndex) -> np.ndarray:
    seg = np.zeros(len(index.prototypes), np.int64)
    seg[index.starts[1:]] = 1
    return np.cumsum(seg)


def _cost(cos: np.ndarray) -> np.ndarray:
    """``cost_prototype_softmax`` on cosines: -log softmax over target classes / log C, per row."""
    C = cos.shape[1]
    if C == 1:
        return np.zeros_like(cos)
    z = cos / COST_TEMPERATURE
    z = z - z.max(axis=1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.clip(-logq / np.log(C), 0.0, 1.0)


def _cosines(index: SpecIndex, target: TargetEmbedding) -> np.ndarray:
    return (index.prototypes @ target.prototypes.T.astype(np.float32)).astype(np.float64)


def _posterior(index: SpecIndex, cos: np.ndarray, seg: np.ndarray, temperature: float) -> np.ndarray:
    """π(j | c) within each teacher: softmax over its classes of cos/τ + log mass, the posterior of a mixture
    over its class prototypes for the target class prototype."""
    z = cos / temperature + index.log_mass[:, None]
    z = z - _segment_max(z, index.starts)[seg]
    e = np.exp(z)
    return e / _segment_sum(e, index.starts)[seg]


def _score_nearest(index: SpecIndex, target: TargetEmbedding, temperature: float = 0.0) -> np.ndarray:
    """Each target class goes to its nearest teacher class and pays that class's reference-space cost
    (specification version 1's score)."""
    cos = _cosines(index, target)
    M = _cost(cos)
    seg = _segment_ids(index)
    hit = cos >= _segment_max(cos, index.starts)[seg] - 1e-7
    return np.minimum.reduceat(np.where(hit, M, np.inf), index.starts, axis=0).mean(axis=1)


def _score_gmm(index: SpecIndex, target: TargetEmbedding, temperature: float, agreement: bool) -> np.ndarray:
    """The mixture posterior spreads each target class over the teacher's classes, which pay the reference-space
    cost; with ``agreement``, a class the teacher recognises with probability a_k only pays
    a_k·M + (1 − a_k)·(mean cost of the teacher's classes)."""
    cos = _cosines(index, target)
    seg = _segment_ids(index)
    M = _cost(cos)
    post = _posterior(index, cos, seg, temperature)
    if agreement:
        sizes = np.diff(np.append(index.starts, len(index.prototypes)))
        mean_cost = _segment_sum(M, index.starts) / sizes[:, None]
        a = index.agreement[:, None]
        M = a * M + (1.0 - a) * mean_cost[seg]
    return _segment_sum(post * M, index.starts).mean(axis=1)


def _predicted(index: SpecIndex, target: TargetEmbedding, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The mixture posterior π(j|c) (R×C) and the teacher's predictions it implies, p̂(k|c) = Σ_j π(j|c)
    confusion[j, k] (R×C): what a teacher would do on the target, read off its specification."""
    cos = _cosines(index, target)
    post = _posterior(index, cos, _segment_ids(index), temperature)
    return post, np.asarray(index.conf_t @ post)


def _expected_cost(index: SpecIndex, pred: np.ndarray, M: np.ndarray, rest) -> np.ndarray:
    """Per teacher, the class-balanced Σ_k p̂(k|c) M[k, c]; predicted mass outside the described classes pays
    ``rest`` (per teacher and class, or one number)."""
    described = _segment_sum(pred, index.starts)  # T×C
    cost = _segment_sum(pred * M, index.starts) + np.clip(1.0 - described, 0.0, 1.0) * rest
    return cost.mean(axis=1)


def _score_gmm_ot(index: SpecIndex, target: TargetEmbedding, temperature: float) -> np.ndarray:
    """Exact OT emulated on the specification. Target class c is the mixture π(·|c) of the teacher's classes; the
    teacher then predicts p̂(k|c) = Σ_j π(j|c) confusion[j, k] (mass to classes it does not describe pays the
    teacher's mean cost), and its classifier row k meets c at cosine Ĝ[k, c] = Σ_j π(j|c) geometry[k, j], which
    gives the cost ``-log softmax_c(Ĝ[k, ·]/0.1)[c] / log C`` of exact OT's ``cost_prototype_softmax``."""
    post, pred = _predicted(index, target, temperature)
    g_hat = np.asarray(index.geo @ post) + index.geo_rest[:, None]
    M = _cost(g_hat)
    sizes = np.diff(np.append(index.starts, len(index.prototypes)))
    mean_cost = _segment_sum(M, index.starts) / sizes[:, None]
    return _expected_cost(index, pred, M, mean_cost)


def _score_gmm_joint(index: SpecIndex, target: TargetEmbedding, temperature: float,
                     alpha: float = 1e-3) -> np.ndarray:
    """Exact OT with the ``joint`` ground cost emulated on the specification: the teacher's predictions
    p̂(k|c) as in :func:`_score_gmm_ot`, their class-balanced joint J = p̂/C, the cost M = 1 − P(c|k) of
    :func:`hubscout.ot.cost_joint` (same ``alpha`` smoothing) and the score ⟨J, M⟩ summed per teacher. Mass the
    teacher sends to classes its specification does not describe pays the uniform cost 1 − 1/C."""
    _, pred = _predicted(index, target, temperature)
    C = pred.shape[1]
    J = pred / C
    M = 1.0 - (J + alpha / C) / (J.sum(axis=1, keepdims=True) + alpha)
    return _expected_cost(index, pred, M, 1.0 - 1.0 / C)


def _label_cover(index: SpecIndex, target: TargetEmbedding) -> np.ndarray:
    names = {c.lower() for c in target.classes}
    return np.array([len(names & {x.lower() for x in labels}) / max(len(names), 1) for labels in index.labels])


SCORE_METHODS: dict[str, Callable[[SpecIndex, TargetEmbedding, float], np.ndarray]] = {
    "nearest": _score_nearest,
    "gmm": lambda i, t, tau: _score_gmm(i, t, tau, agreement=False),
    "gmm-agreement": lambda i, t, tau: _score_gmm(i, t, tau, agreement=True),
    "gmm-ot": _score_gmm_ot,
    "gmm-joint": _score_gmm_joint,
    # A bonus of 0.1 × the fraction of target class names that are teacher label names.
    "gmm-ot+labels": lambda i, t, tau: _score_gmm_ot(i, t, tau) - 0.1 * _label_cover(i, t),
}


def spec_scores(specs: Sequence[Specification] | SpecIndex, target: TargetEmbedding,
                method: str = DEFAULT_METHOD) -> np.ndarray:
    """Cheap relatedness of every specification to the target (lower is better)."""
    index = specs if isinstance(specs, SpecIndex) else SpecIndex.build(list(specs))
    return index.scores(target, method)


@dataclass
class Shortlist:
    teacher_ids: list[str]
    scores: dict[str, float]
    considered: int
    elapsed_s: float
    embed_s: float = 0.0
    method: str = DEFAULT_METHOD

    def to_dict(self) -> dict:
        return {"method": f"specification:{self.method}", "reference": REFERENCE_NAME, "considered": self.considered,
                "kept": len(self.teacher_ids), "teacher_ids": self.teacher_ids,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
                "embed_target_s": round(self.embed_s, 4), "elapsed_s": round(self.elapsed_s, 4),
                "how": ("every teacher scored from its stored specification (class prototypes, masses and "
                        f"self-agreement in the shared {REFERENCE_NAME} embedding; score '{self.method}', lower is "
                        "better) against the target embedded once; the best kept for exact OT")}


def shortlist(specs: Sequence[Specification] | SpecIndex, target: TargetEmbedding, k: int = 10,
              method: str = DEFAULT_METHOD) -> Shortlist:
    """The ``k`` teachers whose specifications score best against the target. ``elapsed_s`` is the scoring
    alone (stacking included when given a list); the target's embedding time is ``embed_s``."""
    t0 = time.perf_counter()
    index = specs if isinstance(specs, SpecIndex) else SpecIndex.build(list(specs))
    scores = index.scores(target, method)
    order = np.argsort(scores, kind="stable")[:k]
    ids = [index.teacher_ids[i] for i in order]
    return Shortlist(ids, {index.teacher_ids[i]: float(scores[i]) for i in order}, len(index),
                     time.perf_counter() - t0, target.embed_s, method)


SHORTLIST_RULE = ("every teacher with a current specification is scored from it against the target embedded once "
                  "by the shared reference model (lower is better) and only the best k run exact OT; a teacher "
                  "without a current specification (pending, failed or stale) always runs exact OT, since nothing "
                  "rules it out")


def plan(candidates: Sequence[str], index: SpecIndex, target: TargetEmbedding, k: int,
         method: str = DEFAULT_METHOD) -> tuple[list[str], dict]:
    """Which of ``candidates`` run exact OT: the ``k`` best by specification (``index`` holds the candidates that
    have one) plus every candidate without one. Returns (ids to run, in candidate order; the description a
    ranking reports)."""
    short = shortlist(index, target, k, method)
    specified = set(index.teacher_ids)
    unspecified = [t for t in candidates if t not in specified]
    run_set = set(short.teacher_ids) | set(unspecified)
    run = [t for t in candidates if t in run_set]
    not_run = [t for t in candidates if t not in run_set]
    info = {**short.to_dict(), "k": k, "rule": SHORTLIST_RULE, "shortlisted": short.teacher_ids,
            "unspecified_run": unspecified, "not_run_count": len(not_run), "not_run": not_run}
    return run, info


# ---------------------------------------------------------------------------------------------- repository files

def load_specification(repo, teacher_id: str) -> Specification | None:
    """The stored specification of a repository teacher, or None when missing, unreadable or stale (other
    weights, an older specification version)."""
    path = repo.root / teacher_id / SPEC_FILE
    if not path.is_file():
        return None
    try:
        spec = Specification.from_bytes(path.read_bytes())
    except ValueError:
        return None
    return spec if spec.is_current(repo.get(teacher_id).weights_sha256) else None


def save_specification(repo_or_root, spec: Specification) -> Path:
    """Write ``<teacher>/spec.npz`` atomically (readers never see half a file)."""
    root = Path(getattr(repo_or_root, "root", repo_or_root))
    path = root / spec.teacher_id / SPEC_FILE
    tmp = path.with_name(f".{SPEC_FILE}.{os.getpid()}.tmp")
    tmp.write_bytes(spec.to_bytes())
    tmp.replace(path)
    return path


def ensure_specifications(repo, embedder: ReferenceEmbedder | None = None, show_progress: bool = False,
                          device=None) -> int:
    """Compute and store the specification of every teacher in ``repo`` that lacks a current one; returns how
    many were computed."""
    missing = [t for t in repo.list() if load_specification(repo, t.id) is None]
    if not missing:
        return 0
    embedder = embedder or ReferenceEmbedder(device=device)
    it = missing
    if show_progress:
        from hubscout.progress import progress_bar

        it = progress_bar(missing, desc="specifications", unit="teacher")
    cache: EmbedCache = {}
    for t in it:
        save_specification(repo, specification_for(t, embedder, embed_cache=cache, device=device,
                                                   probe_cache_dir=repo_cache_dir(repo)))
    return len(missing)


def repo_cache_dir(repo) -> Path:
    """Where a repository keeps the probe set's embeddings (a dot folder: never listed as a teacher)."""
    return Path(repo.root) / ".cache"
