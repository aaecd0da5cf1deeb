"""One batched pass of a teacher over a dataset: pooled features and logits, streamed batch by batch."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from hubscout.data import Dataset, iter_batches
from hubscout.device import autocast, batch_size_for, inference_batch, prepare_for_inference, resolve_device
from hubscout.teachers import Teacher

ProgressFn = Callable[[float, str], None]


def default_device() -> torch.device:
    """``$HUBSCOUT_DEVICE`` (auto, cpu, cuda; see :mod:`hubscout.device`)."""
    return resolve_device()


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


def extract(teacher: Teacher, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device | None = None,
            model: torch.nn.Module | None = None, show_progress: bool = False,
            on_progress: ProgressFn | None = None) -> TeacherOutputs:
    """Run ``teacher`` over ``dataset`` once. Only one batch of model inputs is in memory at a time."""
    return extract_group([teacher], dataset, batch_size=batch_size, device=device,
                         models=None if model is None else [model], show_progress=show_progress,
                         on_progress=on_progress).outputs[0]


@dataclass
class GroupOutputs:
    """:func:`extract_group`'s result: each teacher's outputs, its forward seconds, and the seconds spent making
    the model inputs (shared by the group)."""

    outputs: list[TeacherOutputs]
    forward_s: list[float]
    input_s: float


@torch.inference_mode()
def extract_group(teachers: list[Teacher], dataset: Dataset, *, batch_size: int = 64,
                  device: str | torch.device | None = None, models: list[torch.nn.Module] | None = None,
                  show_progress: bool = False, on_progress: Callable[[int, float, str], None] | None = None
                  ) -> GroupOutputs:
    """Run teachers that share one input config over ``dataset``: each batch is converted (resized, normalised)
    once and fed to every model in turn, so the conversion is paid once per dataset and input config, not once
    per teacher, and still only one batch of inputs is in memory. ``on_progress(i, fraction, message)``: teacher
    ``i`` of the group is ``fraction`` done. Outputs are written into arrays allocated once (no concatenation,
    which would double the peak)."""
    if not teachers:
        return GroupOutputs([], [], 0.0)
    cfg = teachers[0].input
    if any(t.input != cfg for t in teachers):
        raise ValueError("extract_group: the teachers' input configs differ")
    dev = resolve_device(device)
    batch_size = batch_size_for(dev, (cfg.channels, cfg.size, cfg.size), batch_size)  # the given size on the CPU
    models = [prepare_for_inference(m if m is not None else t.load_model(dev), dev)
              for t, m in zip(teachers, models or [None] * len(teachers))]
    heads = [classifier_of(m) for m in models]
    n = len(dataset)
    feats = [np.empty((n, h.in_features), np.float32) for h in heads]
    logits = [np.empty((n, h.out_features), np.float32) for h in heads]
    forward_s = [0.0] * len(models)
    input_s = 0.0
    n_batches = max(1, -(-n // batch_size))
    bar = None
    if show_progress:
        from hubscout.progress import progress_bar

        bar = progress_bar(total=n * len(models), desc=f"forward {', '.join(t.id for t in teachers)}"[:60], unit="img",
                   leave=False)
    batches = iter_batches(dataset.images, cfg, batch_size)
    start = 0
    for b in range(n_batches if n else 0):
        t0 = time.perf_counter()
        x = inference_batch(next(batches), dev)
        input_s += time.perf_counter() - t0
        stop = start + len(x)
        for j, model in enumerate(models):
            t1 = time.perf_counter()
            with autocast(dev):
                f, z = features_and_logits(model, x)
            feats[j][start:stop] = f.float().cpu().numpy()
            logits[j][start:stop] = z.float().cpu().numpy()
            forward_s[j] += time.perf_counter() - t1
            if bar is not None:
                bar.update(len(x))
            if on_progress is not None:
                on_progress(j, (b + 1) / n_batches, f"forward {teachers[j].id}")
        start = stop
    if bar is not None:
        bar.close()
    outs = [TeacherOutputs(
        features=f, logits=z, classifier_weight=h.weight.detach().float().cpu().numpy(),
        classifier_bias=(h.bias.detach().float().cpu().numpy() if h.bias is not None
                         else np.zeros(h.out_features, np.float32)),
    ) for f, z, h in zip(feats, logits, heads)]
    return GroupOutputs(outs, forward_s, input_s)


def input_groups(teachers: list[Teacher], max_group: int = 4) -> list[list[Teacher]]:
    """Teachers with the same input config together (first-seen order), at most ``max_group`` a group: the
    group's models and outputs are in memory at once."""
    by_cfg: dict[Any, list[Teacher]] = {}
    for t in teachers:
        by_cfg.setdefault(t.input, []).append(t)
    return [g[i:i + max_group] for g in by_cfg.values() for i in range(0, len(g), max_group)]


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
