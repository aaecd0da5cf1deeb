"""What a specification holds, how it is built from one forward pass of a teacher, a target embedded in the
reference space, and their bytes."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches
from hubscout.spec._reference import REFERENCE_NAME, ReferenceEmbedder


# Bumped whenever what a specification holds or how it is computed changes: older ones are recomputed.
SPEC_VERSION = 4
SPEC_FILE = "spec.npz"
SPEC_SAMPLE_FILE = "spec-sample.npz"
SPEC_SAMPLES_PER_CLASS = 50
PROBE_PER_CLASS = 10


PROBE_SOURCE = "probe-predictions"
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
    # Per described class, the mean cosine of its own images to its prototype: how tight the class is in the
    # reference embedding, the yardstick against which a target's classes are judged covered (``coverage``).
    spread: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # The teacher's feature geometry over the probe set's classes (:func:`probe_gram`, P×P; empty: not measured):
    # what a feature-only metric such as H-score reads off a teacher, measured on images every teacher sees.
    probe_gram: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    reference: str = REFERENCE_NAME
    n_samples: int = 0
    source: str = "training-sample"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        R = len(self.rows)
        if self.spread.size == 0 and R:
            self.spread = np.ones(R, np.float32)  # unknown: as tight as a class can be (coverage is then strictest)
        ok = (self.prototypes.ndim == 2 and self.prototypes.shape[0] == R and self.class_mass.shape == (R,)
              and R >= 1 and self.conf_idx.shape == self.conf_val.shape == self.geo_idx.shape == self.geo_val.shape
              and self.conf_idx.ndim == 2 and self.conf_idx.shape[0] == R and self.geo_rest.shape == (R,)
              and self.spread.shape == (R,)
              and self.probe_gram.ndim == 2 and self.probe_gram.shape[0] == self.probe_gram.shape[1]
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
            "geo_val": self.geo_val.astype(np.float16), "geo_rest": self.geo_rest.astype(np.float16),
            "spread": self.spread.astype(np.float16),
            # float32: the emulated H-score sums P² of these entries, up to ~P each.
            "probe_gram": self.probe_gram.astype(np.float32)})

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
                       geo_idx=a["geo_idx"], geo_val=a["geo_val"], geo_rest=a["geo_rest"], spread=a["spread"],
                       probe_gram=a["probe_gram"],
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
    protos, mass, _ = class_statistics(embeddings, weights)
    return protos, mass


def class_statistics(embeddings: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`class_prototypes` and each class's spread: the (weighted) mean cosine of its unit embeddings to its
    prototype, which is the norm of their mean (1: all alike; small: scattered)."""
    mass = weights.sum(axis=0)
    means = weights.T @ embeddings / np.maximum(mass[:, None], 1e-12)
    spread = np.linalg.norm(means, axis=1)
    return (_unit_rows(means).astype(np.float32), (mass / max(mass.sum(), 1e-12)).astype(np.float32),
            spread.astype(np.float32))


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
                        view: TeacherView | None = None, device=None, source: str | None = None,
                        probe: tuple[np.ndarray, np.ndarray] | None = None) -> Specification:
    """Specification of ``teacher`` from a sample of images (their reference ``embeddings`` and the teacher's
    ``view`` of them may be given when already computed).

    With ``labels`` (indices into the teacher's labels; -1 = unlabelled) a class's images are its labelled ones
    and the classes without any are left out. Without labels (``probe-predictions``) every image counts towards
    every class with the probability the teacher gives it, and only classes with at least ``PROBE_MIN_IMAGES``
    images' worth of probability are described: of the others the probe set says nothing.

    ``probe``: (the teacher's features on the probe set, the probe images' class indices), for
    :func:`probe_gram`; without it the specification holds no probe geometry.
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
    protos, mass, spread = class_statistics(emb, w)
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
                         spread, probe_gram(*probe) if probe is not None else np.zeros((0, 0), np.float32),
                         REFERENCE_NAME, len(emb),
                         source or ("training-sample" if labels is not None else PROBE_SOURCE))


def probe_gram(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The teacher's feature geometry over the probe classes in H-score's own terms (``hubscout.scores.hscore``,
    shrinkage): G = (1 − λ) M Σ_λ⁻¹ Mᵀ, M the P probe classes' centred mean features, Σ_λ the Ledoit-Wolf
    covariance of all the probe features (the same estimator). It depends on the teacher's features alone, as
    H-score does: teachers sharing a backbone share it.

    Σ_p w_p G[p, p] (w_p the class shares) is the teacher's H-score on the probe set, up to the factor
    N / (N − 1); a target class that looks like the mixture a_c of probe classes has class mean Mᵀ a_c in the
    teacher's features, so the target's H-score is emulated by Σ_c w_c (a_c − ā)ᵀ G (a_c − ā) (``probe-hscore``
    in ``hubscout.spec._scores``). Every entry lies in [−P, P] for P equal classes (G[p, p] ≤ 1 / w_p)."""
    import scipy.linalg

    from hubscout.scores import _ledoit_wolf_shrinkage

    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    P = int(labels.max()) + 1
    N, D = f.shape
    fc = f - f.mean(axis=0, keepdims=True)
    counts = np.bincount(labels, minlength=P).astype(np.float64)
    M = np.zeros((P, D))
    np.add.at(M, labels, fc)
    M /= np.maximum(counts, 1.0)[:, None]
    S = fc.T @ fc / N
    lam = _ledoit_wolf_shrinkage(fc, S)
    cov = (1.0 - lam) * S
    cov[np.diag_indices(D)] += lam * np.trace(S) / D
    try:
        z = scipy.linalg.cho_solve(scipy.linalg.cho_factor(cov), M.T)
    except np.linalg.LinAlgError:  # λ = 0 and a singular covariance: the pseudo-inverse, as hscore falls back
        z = np.linalg.pinv(cov, rcond=1e-15, hermitian=True) @ M.T
    G = (1.0 - lam) * M @ z
    return ((G + G.T) / 2).astype(np.float32)


@torch.inference_mode()
def teacher_view(teacher, images: np.ndarray, device=None, batch_size: int = 64) -> TeacherView:
    """One forward pass of the teacher over the spec images."""
    from hubscout.device import inference_batch, prepare_for_inference
    from hubscout.extract import classifier_of, default_device, features_and_logits

    device = torch.device(device) if device is not None else default_device()
    model = prepare_for_inference(teacher.load_model(device), device)
    feats, probs = [], []
    for x in iter_batches(images, teacher.input, batch_size):
        f, z = features_and_logits(model, inference_batch(x, device))
        feats.append(f.float().cpu().numpy())
        probs.append(torch.softmax(z.float(), dim=1).cpu().numpy())
    W = classifier_of(model).weight.detach().float().cpu().numpy()
    if not feats:
        return TeacherView(np.zeros((0, W.shape[1]), np.float32), np.zeros((0, teacher.num_classes), np.float32), W)
    return TeacherView(np.concatenate(feats), np.concatenate(probs), W)


@dataclass
class TargetEmbedding:
    """The target set seen by the reference model once: its class prototypes (C×d) and class names, and where its
    classes lie among the probe set's (for scores that read a teacher's probe geometry, ``probe_gram``)."""

    prototypes: np.ndarray
    classes: list[str]
    embed_s: float = 0.0
    n_samples: int = 0
    # Per class, the mean cosine of its images to its prototype (``class_statistics``); None: 1 (tight).
    spread: np.ndarray | None = None
    # C×P: the cosine of each target class prototype to each probe class prototype; None: not measured.
    probe_cos: np.ndarray | None = None
    # Per target class, its best coverage ratio among the probe classes (the ratio of ``SpecIndex.covered``):
    # how far the probe set, hence a teacher's probe geometry, says anything about the class.
    probe_cover: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.spread is None:
            self.spread = np.ones(len(self.prototypes), np.float32)

    def to_bytes(self) -> bytes:
        arrays = {"prototypes": self.prototypes.astype(np.float32), "spread": self.spread.astype(np.float32)}
        if self.probe_cos is not None and self.probe_cover is not None:
            arrays.update(probe_cos=self.probe_cos.astype(np.float32), probe_cover=self.probe_cover.astype(np.float32))
        return pack_arrays({"classes": self.classes, "n_samples": self.n_samples, "reference": REFERENCE_NAME},
                           arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TargetEmbedding":
        meta, a = unpack_arrays(data)
        if meta.get("reference") != REFERENCE_NAME:
            raise ValueError("target embedding of another reference model")
        if "spread" not in a:
            raise ValueError("target embedding without class spreads (an older version)")
        return cls(a["prototypes"], [str(c) for c in meta["classes"]], 0.0, int(meta["n_samples"]), a["spread"],
                   a.get("probe_cos"), a.get("probe_cover"))


def embed_target(dataset: Dataset, embedder: ReferenceEmbedder, probe_cache_dir=None,
                 probe: bool = True) -> TargetEmbedding:
    """The target through the reference model: class prototypes and spreads, and (``probe``) its classes against
    the probe set's (whose embedding is computed once per process, and cached in ``probe_cache_dir``)."""
    t0 = time.perf_counter()
    emb = embedder.embed(dataset.images)
    onehot = np.eye(dataset.num_classes, dtype=np.float32)[dataset.labels]
    protos, _, spread = class_statistics(emb, onehot)
    probe_cos = probe_cover = None
    if probe:
        from hubscout.spec._images import probe_classes

        p_protos, yardstick = probe_classes(embedder, probe_cache_dir)
        probe_cos = (protos.astype(np.float64) @ p_protos.T.astype(np.float64)).astype(np.float32)
        probe_cover = (probe_cos * spread[:, None] / np.maximum(yardstick, 1e-6)[None, :]).max(axis=1)
    return TargetEmbedding(protos, list(dataset.classes), time.perf_counter() - t0, len(dataset), spread,
                           probe_cos, probe_cover)
