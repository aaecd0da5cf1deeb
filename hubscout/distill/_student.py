"""A distilled student: predict, save as a folder (safetensors + JSON), load, evaluate."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hubscout.data import Dataset, iter_batches
from hubscout.distill._config import DistillConfig, StudentError
from hubscout.teachers import InputConfig, TeacherError, build_model, file_sha256, read_weights

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
FORMAT = "hubscout-student"
FORMAT_VERSION = 1


@dataclass
class Student:
    """A distilled classifier over ``classes`` (timm ``arch``), ready for :meth:`predict` and :meth:`save`."""

    model: torch.nn.Module
    arch: str
    classes: list[str]
    input: InputConfig
    config: DistillConfig
    teachers: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_sha256: str = ""
    dataset_name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def predict_proba(self, data: Dataset | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N×C, float32), columns in the order of :attr:`classes`."""
        images = _images_of(data)
        self.model.eval()
        out = [F.softmax(self.model(x.to(self.device)).float(), dim=1).cpu().numpy()
               for x in iter_batches(images, self.input, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def predict(self, data: Dataset | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class indices into :attr:`classes` (int64)."""
        return self.predict_proba(data, batch_size).argmax(axis=1).astype(np.int64)

    def config_dict(self) -> dict[str, Any]:
        import hubscout

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "teachers": self.teachers,
            "hyperparameters": self.config.to_dict(),
            "hubscout_version": hubscout.__version__,
            "dataset_sha256": self.dataset_sha256,
            "dataset_name": self.dataset_name,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json``, ``metrics.json``, ``labels.json``, the same network as
        ``model.onnx`` and a ``MODEL_CARD.md`` into ``out_dir``. An ONNX export that fails raises
        :class:`hubscout.export.ExportError`: a student is not saved half-portable without anyone noticing."""
        from safetensors.torch import save_file

        from hubscout.export import CARD_FILE, ONNX_FILE, ONNX_OPSET, export_onnx, model_card

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # Contiguous CPU copies: safetensors refuses shared or strided storage.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE))
        cfg = self.config_dict()
        cfg["weights_sha256"] = file_sha256(out / WEIGHTS_FILE)
        metrics = _json_safe(self.metrics)
        export_onnx(self.model, self.input, out / ONNX_FILE, arch=self.arch, metadata={
            "hubscout_format": FORMAT, "classes": list(self.classes), "input": self.input.to_dict(),
            "weights_sha256": cfg["weights_sha256"], "dataset_sha256": self.dataset_sha256})
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (out / LABELS_FILE).write_text(json.dumps({str(i): c for i, c in enumerate(self.classes)}, indent=2))
        files = {WEIGHTS_FILE: "the weights (safetensors), loaded with `config.json` by hubscout",
                 CONFIG_FILE: "architecture, classes, input, teachers, hyper-parameters, hashes",
                 METRICS_FILE: "accuracies and per-epoch training curves",
                 LABELS_FILE: "output index → class name",
                 ONNX_FILE: f"the same network as ONNX (opset {ONNX_OPSET}, dynamic batch), for onnxruntime"}
        (out / CARD_FILE).write_text(model_card(cfg, metrics, files=files))
        return out


def load_student(path: str | Path, device: str | torch.device | None = None) -> Student:
    """Load a folder written by :meth:`Student.save`. Weights are read as safetensors only and loaded strictly."""
    root = Path(path)
    if not root.is_dir():
        raise StudentError(f"no student folder at {root}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise StudentError(f"student folder {root} has no {name}")
    try:
        cfg = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StudentError(f"{CONFIG_FILE} is not readable JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise StudentError(f"{CONFIG_FILE} must hold a JSON object")
    if cfg.get("format") != FORMAT:
        raise StudentError(f"{CONFIG_FILE} is not a hubscout student (format {cfg.get('format')!r})")
    missing = [k for k in ("arch", "num_classes", "classes", "input", "hyperparameters") if k not in cfg]
    if missing:
        raise StudentError(f"{CONFIG_FILE} lacks field(s): {', '.join(missing)}")
    classes = [str(c) for c in cfg["classes"]]
    if len(classes) != int(cfg["num_classes"]) or len(set(classes)) != len(classes):
        raise StudentError(f"{CONFIG_FILE}: classes do not match num_classes={cfg['num_classes']} or repeat")
    if (root / LABELS_FILE).is_file():
        try:
            labels = json.loads((root / LABELS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StudentError(f"{LABELS_FILE} is not readable JSON: {e}") from e
        if labels != {str(i): c for i, c in enumerate(classes)}:
            raise StudentError(f"{LABELS_FILE} does not match the classes in {CONFIG_FILE}")
    try:
        config = DistillConfig.from_dict(cfg["hyperparameters"])
        input_cfg = InputConfig.from_dict(cfg["input"])
    except (ValueError, TypeError) as e:
        raise StudentError(f"{CONFIG_FILE}: {e}") from e
    expected = cfg.get("weights_sha256")
    if expected and file_sha256(root / WEIGHTS_FILE) != expected:
        raise StudentError(f"{WEIGHTS_FILE} does not match the sha256 recorded in {CONFIG_FILE} "
                           "(replaced or corrupted file)")
    arch_kwargs = dict(cfg.get("arch_kwargs") or {})
    try:
        model = build_model(str(cfg["arch"]), len(classes), input_cfg.channels, arch_kwargs)
        state = read_weights(root / WEIGHTS_FILE)
    except TeacherError as e:
        raise StudentError(f"cannot load student: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [m.strip() for m in str(e).split("\n\t")[:4]]
        raise StudentError(f"{WEIGHTS_FILE} does not fit {cfg['arch']} with {len(classes)} classes: "
                           f"{' '.join(lines)}") from e
    metrics: dict[str, Any] = {}
    if (root / METRICS_FILE).is_file():
        try:
            metrics = json.loads((root / METRICS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StudentError(f"{METRICS_FILE} is not readable JSON: {e}") from e
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return Student(model=model.eval().to(dev), arch=str(cfg["arch"]), classes=classes, input=input_cfg,
                   config=config, teachers=list(cfg.get("teachers") or []), metrics=metrics,
                   arch_kwargs=arch_kwargs, dataset_sha256=str(cfg.get("dataset_sha256") or ""),
                   dataset_name=str(cfg.get("dataset_name") or ""))


def evaluate(student: Student, dataset: Dataset, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy of ``student`` on a labelled ``dataset``; its classes are matched to the student's by name."""
    y = _labels_in(student.classes, dataset)
    pred = student.predict(dataset, batch_size)
    correct = pred == y
    per_class = {}
    for c in np.unique(y):
        per_class[student.classes[c]] = float(correct[y == c].mean())
    return {"accuracy": float(correct.mean()) if len(y) else float("nan"), "per_class_accuracy": per_class,
            "n": int(len(y))}


def _labels_in(classes: Sequence[str], dataset: Dataset) -> np.ndarray:
    """``dataset``'s labels as indices into ``classes``, matching by name."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in dataset.classes if c not in index]
    if unknown:
        raise ValueError(f"label(s) unknown to the student: {', '.join(repr(c) for c in unknown[:10])} "
                         f"(the student knows {', '.join(repr(c) for c in classes[:20])})")
    remap = np.array([index[c] for c in dataset.classes], dtype=np.int64)
    return remap[dataset.labels]


def _images_of(data: Dataset | np.ndarray) -> np.ndarray:
    images = data.images if isinstance(data, Dataset) else data
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError("images must be a Dataset or a uint8 array N×H×W(×C)")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be N×H×W or N×H×W×C with C in (1, 3), got shape {images.shape}")
    return images


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null: strict JSON readers (browsers, the API) reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
