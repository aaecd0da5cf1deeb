"""Teacher specifications: find the right teachers without running them.

A specification is computed once, when a teacher is added: the prototypes of its classes in a *shared* reference
embedding (ImageNet EfficientNet-Lite0 features, the same model for every teacher), with each class's mass. It is
a reduced kernel mean embedding per class in the sense of the learnware paradigm (Zhou & Tan, "Learnware:
small models do big", 2024; Wu et al., "Model reuse with reduced kernel mean embedding specification", TKDE 2021):
the model is described by (a compression of) the data it was trained on, so that a market can be searched
without running any model.

At ranking time the target set is embedded once with the reference model, and each teacher gets a cheap score
from its specification alone, mirroring the exact OT relatedness (``hubscout.ot``): every target class goes to the
teacher class whose prototype is nearest, and pays the discriminative cost ``-log q(c|k) / log C`` of
``cost_prototype_softmax``, so a teacher that maps several target classes onto one class of its own is penalised.
The cost is a (K×C) matrix product per teacher; 1,000 teachers are a few stacked matrix products.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches

REFERENCE_ARCH = "tf_efficientnet_lite0"
# Teachers here see 28-32 px images; 112 px keeps the reference features meaningful at a quarter of 224's cost.
REFERENCE_SIZE = 112
REFERENCE_NAME = f"{REFERENCE_ARCH}@{REFERENCE_SIZE}"
SPEC_TEMPERATURE = 0.1


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
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


@dataclass
class Specification:
    """A teacher's description for search: class prototypes (K×d, unit rows) in the reference embedding."""

    teacher_id: str
    weights_sha256: str
    labels: list[str]
    prototypes: np.ndarray
    class_mass: np.ndarray
    reference: str = REFERENCE_NAME
    n_samples: int = 0
    source: str = "training-sample"

    def to_bytes(self) -> bytes:
        meta = {"teacher_id": self.teacher_id, "weights_sha256": self.weights_sha256, "labels": self.labels,
                "reference": self.reference, "n_samples": self.n_samples, "source": self.source}
        buf = io.BytesIO()
        # float16 halves the size (1,000 ImageNet prototypes: 2.5 MB) at no cost to cosine ranks.
        np.savez(buf, prototypes=self.prototypes.astype(np.float16), class_mass=self.class_mass.astype(np.float32),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Specification":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(prototypes=z["prototypes"].astype(np.float32), class_mass=z["class_mass"], **meta)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_prototypes(embeddings: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted class means (K×d, unit rows) and class masses from N×d embeddings and N×K weights."""
    mass = weights.sum(axis=0)
    protos = weights.T @ embeddings / np.maximum(mass[:, None], 1e-12)
    return _unit_rows(protos).astype(np.float32), (mass / max(mass.sum(), 1e-12)).astype(np.float32)


def build_specification(teacher, images: np.ndarray, embedder: ReferenceEmbedder, labels: np.ndarray | None = None,
                        *, embeddings: np.ndarray | None = None, device=None) -> Specification:
    """Specification of ``teacher`` from a sample of the images it was trained on.

    With ``labels`` (indices into the teacher's labels) the prototypes are class means; without, the teacher
    labels the sample itself (its softmax weights each image), which is what an uploaded teacher without a
    training sample gets from a probe set.
    """
    emb = embeddings if embeddings is not None else embedder.embed(images)
    if labels is not None:
        weights = np.eye(teacher.num_classes, dtype=np.float32)[np.asarray(labels)]
        source = "training-sample"
    else:
        weights = _teacher_probs(teacher, images, device)
        source = "probe-predictions"
    protos, mass = class_prototypes(emb, weights)
    return Specification(teacher.id, teacher.weights_sha256, list(teacher.labels), protos, mass,
                         embedder.name, len(emb), source)


@torch.inference_mode()
def _teacher_probs(teacher, images: np.ndarray, device=None) -> np.ndarray:
    from hubscout.extract import default_device, features_and_logits

    device = torch.device(device) if device is not None else default_device()
    model = teacher.load_model(device)
    out = [torch.softmax(features_and_logits(model, x.to(device))[1].float(), dim=1).cpu().numpy()
           for x in iter_batches(images, teacher.input)]
    return np.concatenate(out)


@dataclass
class TargetEmbedding:
    """The target set seen by the reference model once: its class prototypes (C×d)."""

    prototypes: np.ndarray
    classes: list[str]
    embed_s: float = 0.0


def embed_target(dataset: Dataset, embedder: ReferenceEmbedder) -> TargetEmbedding:
    t0 = time.perf_counter()
    emb = embedder.embed(dataset.images)
    onehot = np.eye(dataset.num_classes, dtype=np.float32)[dataset.labels]
    protos, _ = class_prototypes(emb, onehot)
    return TargetEmbedding(protos, list(dataset.classes), time.perf_counter() - t0)


def spec_scores(specs: Sequence[Specification], target: TargetEmbedding,
                temperature: float = SPEC_TEMPERATURE) -> np.ndarray:
    """Cheap relatedness of every specification to the target (lower is better, in [0, 1]).

    For each target class c the nearest teacher class k*(c) (highest cosine between prototypes) is its image in
    the teacher's label space; the cost is ``-log q(c | k*(c)) / log C`` with ``q(·|k)`` the softmax over target
    classes of the cosines / temperature, the same discriminative cost as the exact OT's default. Averaged over
    target classes. All teachers' prototypes are stacked into one matrix so 1,000 teachers cost one product.
    """
    if not specs:
        return np.zeros(0)
    C = target.prototypes.shape[0]
    stacked = np.concatenate([s.prototypes for s in specs]).astype(np.float32)
    cos = stacked @ target.prototypes.T.astype(np.float32)  # (sum K) × C
    logits = cos / temperature
    logq = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    out = np.empty(len(specs))
    starts = np.concatenate([[0], np.cumsum([len(s.prototypes) for s in specs])])
    for i in range(len(specs)):
        rows = slice(starts[i], starts[i + 1])
        best = np.argmax(cos[rows], axis=0)  # k*(c) for each target class
        out[i] = np.clip(-logq[rows][best, np.arange(C)].mean() / np.log(C), 0.0, 1.0)
    return out


@dataclass
class Shortlist:
    teacher_ids: list[str]
    scores: dict[str, float]
    considered: int
    elapsed_s: float
    method: str = "specification"

    def to_dict(self) -> dict:
        return {"method": self.method, "reference": REFERENCE_NAME, "considered": self.considered,
                "kept": len(self.teacher_ids), "teacher_ids": self.teacher_ids,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
                "elapsed_s": round(self.elapsed_s, 4),
                "how": ("every teacher scored from its stored specification (class prototypes in the shared "
                        f"{REFERENCE_NAME} embedding) against the target embedded once; the best kept for exact OT")}


def shortlist(specs: Sequence[Specification], target: TargetEmbedding, k: int = 10) -> Shortlist:
    """The ``k`` teachers whose specifications are closest to the target."""
    t0 = time.perf_counter()
    scores = spec_scores(specs, target)
    order = np.argsort(scores, kind="stable")[:k]
    ids = [specs[i].teacher_id for i in order]
    return Shortlist(ids, {specs[i].teacher_id: float(scores[i]) for i in order}, len(specs),
                     time.perf_counter() - t0 + target.embed_s)


SPEC_FILE = "spec.npz"
SPEC_SAMPLES_PER_CLASS = 50


def probe_images(per_class: int = 10, seed: int = 0) -> np.ndarray:
    """A fixed mixed probe set from every demo source, for teachers that come without a training sample."""
    from hubscout.sources import SOURCES, load_source, sample_per_class

    parts = [sample_per_class(load_source(name, "train"), per_class, seed=seed).images for name in SOURCES]
    return np.concatenate([p if p.shape[-1] == 1 else p.mean(-1, keepdims=True).astype(np.uint8) for p in parts])


def specification_for(teacher, embedder: ReferenceEmbedder, per_class: int = SPEC_SAMPLES_PER_CLASS,
                      seed: int = 0) -> Specification:
    """A zoo teacher's specification from a sample of its own training data; any other teacher's from the
    probe set labelled by the teacher itself."""
    from hubscout.sources import sample_per_class
    from hubscout.zoo import teacher_task_data

    try:
        sample = sample_per_class(teacher_task_data(teacher, "train"), per_class, seed=seed)
    except ValueError:
        return build_specification(teacher, probe_images(), embedder)
    return build_specification(teacher, sample.images, embedder, labels=sample.labels)


def load_specification(repo, teacher_id: str) -> Specification | None:
    path = repo.root / teacher_id / SPEC_FILE
    if not path.is_file():
        return None
    spec = Specification.from_bytes(path.read_bytes())
    # A spec of other weights (the teacher was replaced) is stale: treat as missing.
    return spec if spec.weights_sha256 == repo.get(teacher_id).weights_sha256 else None


def ensure_specifications(repo, embedder: ReferenceEmbedder | None = None, show_progress: bool = False) -> int:
    """Compute and store the specification of every teacher in ``repo`` that lacks one; returns how many."""
    missing = [t for t in repo.list() if load_specification(repo, t.id) is None]
    if not missing:
        return 0
    embedder = embedder or ReferenceEmbedder()
    it = missing
    if show_progress:
        from tqdm.auto import tqdm

        it = tqdm(missing, desc="specifications", unit="teacher")
    for t in it:
        (repo.root / t.id / SPEC_FILE).write_bytes(specification_for(t, embedder).to_bytes())
    return len(missing)
