"""One batched pass of a teacher over a dataset: pooled features and logits, streamed batch by batch."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches
from hubscout.teachers import Teacher

ProgressFn = Callable[[float, str], None]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TeacherOutputs:
    """A teacher's view of a dataset: pre-logit features (N×D), logits (N×K), and its classifier (K×D, K)."""

    features: np.ndarray
    logits: np.ndarray
    classifier_weight: np.ndarray
    classifier_bias: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez(buf, features=self.features, logits=self.logits, classifier_weight=self.classifier_weight,
                 classifier_bias=self.classifier_bias)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TeacherOutputs":
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["features"], z["logits"], z["classifier_weight"], z["classifier_bias"])


def classifier_of(model: torch.nn.Module) -> torch.nn.Linear:
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has a {type(head).__name__} head; a Linear classifier is required")
    return head


def features_and_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features and logits from one timm forward (the head applied once, not twice)."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, classifier_of(model)(feats)


@torch.inference_mode()
def extract(teacher: Teacher, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device | None = None,
            model: torch.nn.Module | None = None, show_progress: bool = False,
            on_progress: ProgressFn | None = None) -> TeacherOutputs:
    """Run ``teacher`` over ``dataset`` once. Only one batch of model inputs is in memory at a time."""
    device = torch.device(device) if device is not None else default_device()
    model = model if model is not None else teacher.load_model(device)
    head = classifier_of(model)
    feats, logits = [], []
    n_batches = max(1, -(-len(dataset) // batch_size))
    bar = None
    if show_progress:
        from hubscout.progress import progress_bar

        bar = progress_bar(total=len(dataset), desc=f"forward {teacher.id}", unit="img", leave=False)
    for i, x in enumerate(iter_batches(dataset.images, teacher.input, batch_size)):
        f, z = features_and_logits(model, x.to(device))
        feats.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
        if bar is not None:
            bar.update(len(x))
        if on_progress is not None:
            on_progress((i + 1) / n_batches, f"forward {teacher.id}")
    if bar is not None:
        bar.close()
    return TeacherOutputs(
        features=np.concatenate(feats), logits=np.concatenate(logits),
        classifier_weight=head.weight.detach().float().cpu().numpy(),
        classifier_bias=(head.bias.detach().float().cpu().numpy() if head.bias is not None
                         else np.zeros(head.out_features, np.float32)),
    )


class OutputsCache(Protocol):
    """Where teacher outputs are kept between rankings, keyed by (``Teacher.outputs_key``, dataset hash): the
    key covers the weights, the architecture and the input config, since all three shape the outputs."""

    def get(self, teacher_sha256: str, dataset_sha256: str) -> TeacherOutputs | None: ...

    def put(self, teacher_sha256: str, dataset_sha256: str, outputs: TeacherOutputs) -> None: ...


class FileCache:
    """The library's cache: one ``.npz`` per (teacher, dataset) under a folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, teacher_sha256: str, dataset_sha256: str) -> Path:
        key = hashlib.sha256(f"{teacher_sha256}:{dataset_sha256}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.npz"

    def get(self, teacher_sha256: str, dataset_sha256: str) -> TeacherOutputs | None:
        path = self._path(teacher_sha256, dataset_sha256)
        if not path.is_file():
            return None
        try:
            return TeacherOutputs.from_bytes(path.read_bytes())
        except (OSError, ValueError, KeyError):
            return None  # a torn write: recompute rather than fail

    def put(self, teacher_sha256: str, dataset_sha256: str, outputs: TeacherOutputs) -> None:
        path = self._path(teacher_sha256, dataset_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(outputs.to_bytes())
        tmp.replace(path)


def outputs_for(teacher: Teacher, dataset: Dataset, cache: OutputsCache | None = None, **kw) -> tuple[TeacherOutputs, bool]:
    """Cached outputs if there are any, else a forward pass (stored in the cache). Returns (outputs, was_cached)."""
    if cache is not None:
        hit = cache.get(teacher.outputs_key, dataset.sha256)
        if hit is not None:
            return hit, True
    out = extract(teacher, dataset, **kw)
    if cache is not None:
        cache.put(teacher.outputs_key, dataset.sha256, out)
    return out, False
