"""Cross-task distillation of a small student from one or more teachers of the repository.

The loss follows Lu, Ye & Zhan, "Selective Cross-Task Distillation" (arXiv 2204.11526): a teacher trained on
other classes cannot be matched to the student class by class, so its softened prediction (over its K classes)
is *transported* onto the student's softened prediction (over the C target classes) under a ground cost that
relates the two label spaces, and the entropic transport cost is minimised alongside the cross-entropy on the
few labels:

    L = CE(s(x), y) + λ τ² Σ_t w_t OT_ε( softmax(t(x)/τ), softmax(s(x)/τ); M_t )

``M_t`` (K×C) is computed once, from the teacher's features on the labelled training split (see
:func:`hubscout.ot.cost_matrix`). The teachers see the same augmented images as the student; that is where the
distillation term adds information beyond the labels. Augmented views are drawn per epoch from a seeded
generator and the teachers' logits for a view are computed once and reused (``teacher_views``), so a large
teacher costs ``min(epochs, teacher_views)`` passes over the training set, not one per epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hubscout.data import Dataset, iter_batches, to_tensor
from hubscout.extract import default_device, extract, features_and_logits
from hubscout.ot import DEFAULT_DISTILL_COST
from hubscout.teachers import InputConfig, Repository, TeacherError, build_model, file_sha256, read_weights

__all__ = ["DistillConfig", "Student", "StudentError", "distill", "evaluate", "load_student", "ot_loss",
           "augment_images"]

ProgressFn = Callable[[float, str], None]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
PREDICT_FILE = "predict.py"
FORMAT = "hubscout-student"
FORMAT_VERSION = 1


KD_METHODS = ("ot", "proto")


class StudentError(ValueError):
    """A student folder that cannot be loaded, or a distillation request that cannot run; the message says why."""


# ------------------------------------------------------------------------------------------------- config

@dataclass
class DistillConfig:
    """Hyper-parameters of :func:`distill`.

    The defaults were chosen on a validation task (10-shot Fashion-MNIST, all 10 classes, few-shot sets and
    validation images both drawn from the *train* split), never on a test split: λ=1, τ=4, ε=0.05 and at least
    300 optimiser steps did best for the OT student; CE-only gained nothing from longer training.
    """

    student_arch: str = "resnet18"
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None  # None: the dataset's image side, at least 32 and at most 224
    epochs: int = 40
    min_steps: int = 300  # more epochs than ``epochs`` when the data is too small for this many optimiser steps
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    lam: float = 1.0  # λ, weight of the OT term
    tau: float = 4.0  # τ, softens teacher and student before transport
    reg: float = 0.05  # ε, entropic regularisation of Sinkhorn, in cost units (costs lie in [0, 1])
    sinkhorn_iters: int = 30
    cost: str = DEFAULT_DISTILL_COST
    # "ot": the OT term above. "proto": the prototype cross-task KD baseline (teacher-embedding class centres of
    # the target classes turn the teacher's features into logits over the target classes; KL to the student, as
    # in REFILLED's second stage, Ye et al., CVPR 2020). Kept for the benchmark's comparison.
    kd: str = "ot"
    proto_temperature: float = 0.1  # cosine to a class centre / this = the proto teacher's logit
    ce_only: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    hflip: bool = True  # part of the augmentation; turn off for data where a mirror changes the class (digits)
    teacher_views: int = 10  # augmented views whose teacher logits are computed once and reused across epochs

    def __post_init__(self) -> None:
        from hubscout.ot import COSTS

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"bad distillation config: {msg}")

        need(isinstance(self.student_arch, str) and bool(self.student_arch), "student_arch must be a timm name")
        need(isinstance(self.student_kwargs, dict), "student_kwargs must be a mapping")
        need(self.input_size is None or 8 <= int(self.input_size) <= 1024, "input_size must be in [8, 1024]")
        need(int(self.epochs) >= 1, "epochs must be >= 1")
        need(int(self.min_steps) >= 0, "min_steps must be >= 0")
        need(int(self.batch_size) >= 2, "batch_size must be >= 2")
        need(math.isfinite(self.lr) and self.lr > 0, "lr must be > 0")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay must be >= 0")
        need(math.isfinite(self.lam) and self.lam >= 0, "lam must be >= 0")
        need(math.isfinite(self.tau) and self.tau > 0, "tau must be > 0")
        need(math.isfinite(self.reg) and self.reg > 0, "reg must be > 0")
        need(int(self.sinkhorn_iters) >= 1, "sinkhorn_iters must be >= 1")
        need(self.cost in COSTS, f"cost must be one of {sorted(COSTS)}, got {self.cost!r}")
        need(self.kd in KD_METHODS, f"kd must be one of {', '.join(KD_METHODS)}, got {self.kd!r}")
        need(math.isfinite(self.proto_temperature) and self.proto_temperature > 0, "proto_temperature must be > 0")
        need(0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)")
        need(int(self.teacher_views) >= 1, "teacher_views must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error (typos)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown distillation option(s): {', '.join(unknown)}")
        kw: dict[str, Any] = {}
        try:
            for k, v in d.items():
                default = known[k].default
                if v is None or k == "student_kwargs":
                    kw[k] = dict(v) if k == "student_kwargs" and v is not None else v
                elif isinstance(default, bool):
                    if not isinstance(v, (bool, np.bool_)):
                        raise TypeError(f"{k} must be true or false")
                    kw[k] = bool(v)
                elif isinstance(default, int) or k == "input_size":
                    if float(v) != int(v):
                        raise TypeError(f"{k} must be an integer")
                    kw[k] = int(v)
                elif isinstance(default, float):
                    kw[k] = float(v)
                else:
                    kw[k] = str(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad distillation config: {e}") from e
        return cls(**kw)


# ------------------------------------------------------------------------------------------------- student

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
        (out / LABELS_FILE).write_text(json.dumps(list(self.classes), indent=2))
        files = {WEIGHTS_FILE: "the weights (safetensors), loaded with `config.json` by hubscout",
                 CONFIG_FILE: "architecture, classes, input, teachers, hyper-parameters, hashes",
                 METRICS_FILE: "accuracies and per-epoch training curves",
                 LABELS_FILE: "class names as a list, in output index order",
                 ONNX_FILE: f"the same network as ONNX (opset {ONNX_OPSET}, dynamic batch), for onnxruntime",
                 PREDICT_FILE: "`python predict.py image.png`: runs model.onnx with onnxruntime, numpy and Pillow "
                               "alone, preparing the image as in training"}
        shutil.copyfile(Path(__file__).with_name("predict.py"), out / PREDICT_FILE)
        (out / CARD_FILE).write_text(model_card(cfg, metrics, files=files))
        # Owner-only: a student is learned from the user's data and may give it away.
        for name in (*files, CARD_FILE):
            (out / name).chmod(0o600)
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
        # A list in output-index order; students saved before 0.x wrote {"0": name, ...}.
        if labels != classes and labels != {str(i): c for i, c in enumerate(classes)}:
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


# ------------------------------------------------------------------------------------------------- loss

def ot_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, M: torch.Tensor, *, tau: float,
            reg: float, n_iter: int) -> torch.Tensor:
    """Mean entropic OT cost from the teacher's softened prediction (K) to the student's (C) under cost ``M``.

    The distillation term of Lu, Ye & Zhan (arXiv 2204.11526); gradients flow to the student only.
    """
    from hubscout.ot import sinkhorn_log_torch

    log_a = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    log_b = F.log_softmax(student_logits.float() / tau, dim=1)
    return sinkhorn_log_torch(log_a, log_b, M, reg, n_iter=n_iter).mean()


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, tau: float) -> torch.Tensor:
    """KL(teacher || student) of the τ-softened predictions over the same classes (Hinton et al., 2015)."""
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    p = F.softmax(teacher_logits.detach().float() / tau, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


# ------------------------------------------------------------------------------------------------- augmentation

def augment_images(images: np.ndarray, generator: torch.Generator, *, hflip: bool = True,
                   chunk: int = 256) -> np.ndarray:
    """A random affine view of every image (zoom 0.8–1, shift ±10 %, rotation ±10°, optional mirror), uint8.

    Done at the images' own resolution, before any model's resizing and normalisation, so that teachers and
    student, whatever their input configs, see the same view.
    """
    out = np.empty_like(images)
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(images[s:s + chunk]).permute(0, 3, 1, 2).float()
        n = x.shape[0]
        scale = torch.empty(n).uniform_(0.8, 1.0, generator=generator)
        angle = torch.empty(n).uniform_(-math.pi / 18, math.pi / 18, generator=generator)
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.2  # ±10 % of the side (grid spans 2)
        flip = (torch.rand(n, generator=generator) < 0.5) & bool(hflip)
        sx = torch.where(flip, -scale, scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([sx * cos, -scale * sin, shift[:, 0]], 1),
                             torch.stack([sx * sin, scale * cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[s:s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# ------------------------------------------------------------------------------------------------- distill

def _split_indices(labels: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/validation indices; every class keeps at least one training sample."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(fraction * len(idx))) if fraction > 0 else 0
        n = min(max(n, 1 if (fraction > 0 and len(idx) > 1) else 0), len(idx) - 1)
        val.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def _student_input(images: np.ndarray, size: int | None) -> InputConfig:
    """Input config from the training images: their side (clamped to [32, 224]) and per-channel statistics."""
    side = max(images.shape[1], images.shape[2])
    size = int(size) if size is not None else min(max(side, 32), 224)
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(round(float(m), 4) for m in x.mean(axis=0))
    # A constant channel would give std 0; a floor keeps the normalisation finite.
    std = tuple(round(max(float(s), 0.01), 4) for s in x.std(axis=0))
    return InputConfig(size, int(images.shape[-1]), mean, std)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled partition into near-equal batches: no batch of one, which BatchNorm cannot train on."""
    perm = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(perm, max(1, math.ceil(n / batch_size))))


def distill(dataset: Dataset, repo: Repository | None, teacher_ids: Sequence[str],
            config: DistillConfig | None = None, *, weights: Sequence[float] | None = None,
            relatedness: Mapping[str, float] | None = None, device: str | torch.device | None = None,
            show_progress: bool = False, on_progress: ProgressFn | None = None,
            on_epoch: Callable[[dict[str, list]], None] | None = None) -> Student:
    """Train a student on ``dataset`` with CE plus the OT distillation term from ``teacher_ids``.

    Lu, Ye & Zhan, "Selective Cross-Task Distillation" (arXiv 2204.11526): each teacher's softened prediction is
    transported onto the student's under its ground cost M_t (K×C), computed once from the teacher's features on
    the training split; teachers are weighted by ``weights`` (e.g. from their relatedness), normalised to sum 1,
    or uniformly; ``relatedness`` (teacher id → OT cost, from :func:`hubscout.rank.relatedness_scores`) is only
    recorded with the student, for its model card. ``config.ce_only`` trains the plain cross-entropy student, for
    comparison, and needs no teacher. ``on_epoch`` gets the training curves so far (a copy of
    ``metrics["curves"]``) after every epoch.

    Deterministic on CPU for a given ``config.seed``.
    """
    cfg = config or DistillConfig()
    # Small weights and gradients turn denormal in training, which slows CPU kernels several-fold; flushing them
    # to zero changes nothing that matters. Back to torch's default (off) afterwards.
    torch.set_flush_denormal(True)
    try:
        student = _distill(dataset, repo, teacher_ids, cfg, weights, device, show_progress, on_progress, on_epoch)
    finally:
        torch.set_flush_denormal(False)
    for t in student.teachers:
        t["ot_relatedness"] = float(relatedness[t["id"]]) if relatedness and t["id"] in relatedness else None
    return student


def _distill(dataset: Dataset, repo: Repository | None, teacher_ids: Sequence[str], cfg: DistillConfig,
             weights: Sequence[float] | None, device: str | torch.device | None, show_progress: bool,
             on_progress: ProgressFn | None, on_epoch: Callable[[dict[str, list]], None] | None) -> Student:
    from hubscout.ot import cost_matrix

    t_start = time.perf_counter()
    dev = torch.device(device) if device is not None else default_device()
    C = dataset.num_classes
    ids = [] if cfg.ce_only else list(teacher_ids)
    if not cfg.ce_only and not ids:
        raise StudentError("no teacher given: name at least one, or set ce_only for a cross-entropy-only student")
    if len(set(ids)) != len(ids):
        raise StudentError("a teacher is named twice")
    if cfg.ce_only:
        w = np.zeros(0)
    elif weights is None:
        w = np.full(len(ids), 1.0 / len(ids))
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (len(ids),):
            raise StudentError(f"{len(w)} weights for {len(ids)} teachers")
        if not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise StudentError("teacher weights must be finite, non-negative and not all zero")
        w = w / w.sum()
    if ids and repo is None:
        raise StudentError("a repository is needed to distil from teachers")
    teachers = [repo.get(t) for t in ids] if ids else []  # type: ignore[union-attr]

    tr_idx, va_idx = _split_indices(dataset.labels, C, cfg.val_fraction, cfg.seed)
    train = Dataset(dataset.images[tr_idx], dataset.labels[tr_idx], dataset.classes, name=dataset.name)
    val_x, val_y = dataset.images[va_idx], dataset.labels[va_idx]
    in_cfg = _student_input(train.images, cfg.input_size)
    N = len(train)

    def report(frac: float, msg: str) -> None:
        if on_progress is not None:
            on_progress(min(max(frac, 0.0), 1.0), msg)

    # Teachers: their models (kept for the per-view forwards) and, from the clean train split, their ground costs
    # (OT) or the unit-norm centres of the target classes in their feature space (prototype KD).
    t_models, t_costs, t_centres = [], [], []
    for t in teachers:
        report(0.0, f"teacher {t.id}: ground cost")
        model = t.load_model(dev)
        out = extract(t, train, model=model, device=dev)
        if cfg.kd == "ot":
            M = cost_matrix(cfg.cost, classifier_weight=out.classifier_weight, features=out.features,
                            probs=out.probs, labels=train.labels, n_classes=C)
            t_costs.append(torch.as_tensor(M, dtype=torch.float32, device=dev))
        else:
            centres = np.stack([out.features[train.labels == c].mean(axis=0) for c in range(C)])
            t_centres.append(F.normalize(torch.as_tensor(centres, dtype=torch.float32, device=dev), dim=1))
        t_models.append(model)

    # Seeds: the model init from a forked global RNG (timm draws from it) so the caller's stream is untouched;
    # shuffling and augmentation from their own generators.
    fork = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        try:
            model = build_model(cfg.student_arch, C, in_cfg.channels, cfg.student_kwargs)
        except TeacherError as e:
            raise StudentError(f"bad student: {e}") from e
    model = model.to(dev)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    n_views = cfg.teacher_views if cfg.augment else 1
    view_cache: dict[int, list[torch.Tensor]] = {}

    def view(e: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Epoch ``e``'s images and every teacher's logits on them; view ``e % n_views``, generated by seed."""
        v = e % n_views
        if cfg.augment:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + v)
            images = augment_images(train.images, gen, hflip=cfg.hflip)
        else:
            images = train.images
        if v not in view_cache:
            logits = []
            with torch.inference_mode():
                for i, (t, tm) in enumerate(zip(teachers, t_models)):
                    if cfg.kd == "ot":
                        z = [tm(x.to(dev)).float() for x in iter_batches(images, t.input, 64)]
                    else:  # logits over the target classes: cosine to each class centre
                        z = [F.normalize(features_and_logits(tm, x.to(dev))[0].float(), dim=1) @ t_centres[i].T
                             / cfg.proto_temperature for x in iter_batches(images, t.input, 64)]
                    logits.append(torch.cat(z).to(dev))
            view_cache[v] = logits
        return images, view_cache[v]

    decay, no_decay = [], []
    for p in model.parameters():
        # Weight decay on norms and biases only shrinks the scales BatchNorm learns; standard practice skips them.
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(N / cfg.batch_size))
    # Ten shots of three classes make one batch an epoch: count optimiser steps, not passes, to train enough.
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch * 2, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    y_all = torch.from_numpy(train.labels).to(dev)
    # "kd" is the distillation term whichever it is; "ot" repeats it for the OT loss (older readers know that key).
    curves: dict[str, list] = {"epoch": [], "loss": [], "ce": [], "kd": [], "ot": [], "train_acc": [], "val_acc": []}
    kd_scale = cfg.lam * cfg.tau ** 2
    bar = None
    if show_progress:
        from hubscout.progress import progress_bar

        bar = progress_bar(total=epochs, desc="distil" if ids else "train (CE only)", unit="epoch")
    report(0.0, "training")
    for epoch in range(epochs):
        images, t_logits = view(epoch)
        model.train()
        s_loss = s_ce = s_ot = 0.0
        n_correct = 0
        for idx in _batches(N, cfg.batch_size, shuffle_gen):
            idx_d = idx.to(dev)
            logits = model(to_tensor(images[idx.numpy()], in_cfg).to(dev))
            y = y_all[idx_d]
            ce = F.cross_entropy(logits, y)
            otv = torch.zeros((), device=dev)
            for i, (wt, tl) in enumerate(zip(w, t_logits)):
                if cfg.kd == "ot":
                    term = ot_loss(tl[idx_d], logits, t_costs[i], tau=cfg.tau, reg=cfg.reg, n_iter=cfg.sinkhorn_iters)
                else:
                    term = kl_loss(tl[idx_d], logits, tau=cfg.tau)
                otv = otv + float(wt) * term
            loss = ce + kd_scale * otv if ids else ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(idx)
            s_loss += loss.item() * b
            s_ce += ce.item() * b
            s_ot += otv.item() * b
            n_correct += int((logits.argmax(1) == y).sum())
        val_acc = _accuracy(model, val_x, val_y, in_cfg, dev) if len(val_y) else None
        curves["epoch"].append(epoch + 1)
        curves["loss"].append(s_loss / N)
        curves["ce"].append(s_ce / N)
        curves["kd"].append(s_ot / N if ids else None)
        curves["ot"].append(s_ot / N if ids and cfg.kd == "ot" else None)
        curves["train_acc"].append(n_correct / N)
        curves["val_acc"].append(val_acc)
        msg = f"epoch {epoch + 1}/{epochs} loss {s_loss / N:.3f}" + (
            f" val {val_acc:.3f}" if val_acc is not None else "")
        if bar is not None:
            bar.set_postfix(loss=f"{s_loss / N:.3f}", val=f"{val_acc:.3f}" if val_acc is not None else "-")
            bar.update(1)
        if on_epoch is not None:
            on_epoch({k: list(v) for k, v in curves.items()})
        report((epoch + 1) / epochs, msg)
    if bar is not None:
        bar.close()
    del view_cache, t_models

    model.eval()
    metrics = {
        "train_accuracy": _accuracy(model, train.images, train.labels, in_cfg, dev),
        "val_accuracy": _accuracy(model, val_x, val_y, in_cfg, dev) if len(val_y) else None,
        "n_train": int(N),
        "n_val": int(len(val_y)),
        "epochs": epochs,
        "steps": total,
        "curves": curves,
        "elapsed_s": round(time.perf_counter() - t_start, 3),
        "device": str(dev),
    }
    used = [{"id": t.id, "name": t.name, "weights_sha256": t.weights_sha256, "weight": float(wt)}
            for t, wt in zip(teachers, w)]
    return Student(model=model, arch=cfg.student_arch, classes=list(dataset.classes), input=in_cfg, config=cfg,
                   teachers=used, metrics=metrics, arch_kwargs=dict(cfg.student_kwargs),
                   dataset_sha256=dataset.sha256, dataset_name=dataset.name)


@torch.inference_mode()
def _accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, cfg: InputConfig,
              dev: torch.device) -> float:
    model.eval()
    pred = [model(x.to(dev)).argmax(1).cpu().numpy() for x in iter_batches(images, cfg, 256)]
    return float((np.concatenate(pred) == labels).mean())
