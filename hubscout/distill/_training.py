"""The training loop of a distillation, in steps: teachers and their terms, the student, the views, the
optimiser, the epochs."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hubscout.data import Dataset, iter_batches, to_tensor
from hubscout.distill._augment import augment_images
from hubscout.distill._config import DistillConfig, StudentError, plan_schedule
from hubscout.distill._controls import CONTROL_METRICS, ControlCache, control_key
from hubscout.distill._losses import KD_METHODS
from hubscout.distill._student import Student
from hubscout.device import autocast, inference_batch, prepare_model, resolve_device, to_device
from hubscout.extract import extract
from hubscout.students import fit_student, student_side
from hubscout.teachers import InputConfig, Repository, TeacherError, build_model

ProgressFn = Callable[[float, str], None]


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
    size = student_side(max(images.shape[1], images.shape[2]), size)
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(round(float(m), 4) for m in x.mean(axis=0))
    # A constant channel would give std 0; a floor keeps the normalisation finite.
    std = tuple(round(max(float(s), 0.01), 4) for s in x.std(axis=0))
    return InputConfig(size, int(images.shape[-1]), mean, std)


@dataclasses.dataclass
class Mix:
    """How a view was blended: image i is ``weight[i]`` × itself + (1 − ``weight[i]``) × image ``partner[i]``."""

    partner: torch.Tensor
    weight: torch.Tensor


def mix_images(images: np.ndarray, alpha: float, seed: int) -> tuple[np.ndarray, Mix]:
    """Mixup (Zhang et al., ICLR 2018) of a view with a permutation of itself, weights ~ Beta(α, α) folded to
    ≥ 0.5 so that each image stays mostly itself; uint8 in, uint8 out."""
    rng = np.random.default_rng(seed)
    partner = rng.permutation(len(images))
    lam = rng.beta(alpha, alpha, size=len(images))
    lam = np.maximum(lam, 1 - lam).astype(np.float32)
    x = images.astype(np.float32)
    mixed = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    return (np.clip(np.rint(mixed), 0, 255).astype(np.uint8),
            Mix(torch.from_numpy(partner.astype(np.int64)), torch.from_numpy(lam)))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled partition into near-equal batches: no batch of one, which BatchNorm cannot train on."""
    perm = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(perm, max(1, math.ceil(n / batch_size))))


def resolve_student(dataset: Dataset, repo: Repository | None, teacher_ids: Sequence[str],
                    cfg: DistillConfig) -> tuple[DistillConfig, dict[str, Any]]:
    """``cfg`` with its student made concrete (``"auto"`` and size names resolved, see :mod:`hubscout.students`)
    and checked to take the dataset's input, and the choice as a dict; raises :class:`StudentError` early."""
    ids = [] if cfg.ce_only else list(teacher_ids)
    t_params = [repo.get(t).num_params for t in ids] if ids and repo is not None else []
    choice = fit_student(cfg.student_arch, cfg.student_kwargs, dataset.num_classes, dataset.images.shape[1:],
                         cfg.input_size, t_params)
    return dataclasses.replace(cfg, student_arch=choice.arch, student_kwargs=dict(choice.kwargs)), choice.to_dict()


def distill(dataset: Dataset, repo: Repository | None, teacher_ids: Sequence[str],
            config: DistillConfig | None = None, *, mixture: Sequence[float] | None = None,
            relatedness: Mapping[str, float] | None = None, device: str | torch.device | None = None,
            show_progress: bool = False, on_progress: ProgressFn | None = None,
            on_epoch: Callable[[dict[str, list]], None] | None = None, ce_control: bool = False,
            control_cache: ControlCache | None = None) -> Student:
    """Train a student on ``dataset`` with CE plus the OT distillation term from ``teacher_ids``.

    Lu, Ye & Zhan, "Selective Cross-Task Distillation" (arXiv 2204.11526): each teacher's softened prediction is
    transported onto the student's under its ground cost M_t (K×C), computed once from the teacher's features on
    the training split; teachers are mixed by ``mixture`` (e.g. from their relatedness,
    :func:`hubscout.rank.weigh_teachers`), normalised to sum 1, or uniformly; ``relatedness`` (teacher id → OT
    cost) is only
    recorded with the student, for its model card. ``config.ce_only`` trains the plain cross-entropy student, for
    comparison, and needs no teacher. ``on_epoch`` gets the training curves so far (a copy of
    ``metrics["curves"]``) after every epoch.

    ``ce_control``: also train the cross-entropy-only student with the same student, schedule, split and seed
    (or read it from ``control_cache``, keyed by :func:`control_key`), reported as ``metrics["ce_only"]`` beside
    the student's validation accuracy; a CE-only student fills the cache for later distillations on its data.
    A non-finite loss or non-finite weights raise :class:`StudentError`: no broken student is returned.

    Deterministic on CPU for a given ``config.seed``.
    """
    cfg, choice = resolve_student(dataset, repo, teacher_ids, config or DistillConfig())
    key = control_key(dataset.sha256, cfg)
    control = None
    if ce_control and not cfg.ce_only and control_cache is not None:
        control = control_cache.get(key)
    train_control = ce_control and not cfg.ce_only and control is None
    split = 0.6 if train_control else 1.0

    def scaled(lo: float, hi: float) -> ProgressFn | None:
        return None if on_progress is None else (lambda f, m: on_progress(lo + (hi - lo) * f, m))

    # Small weights and gradients turn denormal in training, which slows CPU kernels several-fold; flushing them
    # to zero changes nothing that matters. Back to torch's default (off) afterwards.
    torch.set_flush_denormal(True)
    try:
        student = _distill(dataset, repo, teacher_ids, cfg, mixture, device, show_progress, scaled(0, split),
                           on_epoch)
        if train_control:
            ce = _distill(dataset, None, [], dataclasses.replace(cfg, ce_only=True), None, device, False,
                          scaled(split, 1.0), None)
            control = {k: ce.metrics[k] for k in CONTROL_METRICS}
    finally:
        torch.set_flush_denormal(False)
    if cfg.ce_only:
        control = {k: student.metrics[k] for k in CONTROL_METRICS}
        if control_cache is not None:
            control_cache.put(key, control)
        student.metrics["ce_only"] = {**control, "cached": False, "same_student": True}
    elif control is not None:
        if train_control and control_cache is not None:
            control_cache.put(key, control)
        student.metrics["ce_only"] = {**control, "cached": not train_control, "same_student": False}
    ce_val, val = (student.metrics.get("ce_only") or {}).get("val_accuracy"), student.metrics.get("val_accuracy")
    student.metrics["gain_vs_ce"] = None if ce_val is None or val is None else val - ce_val
    student.metrics["student"] = choice
    for t in student.teachers:
        t["ot_relatedness"] = float(relatedness[t["id"]]) if relatedness and t["id"] in relatedness else None
    return student


def _teacher_mixture(ids: list[str], mixture: Sequence[float] | None, ce_only: bool) -> np.ndarray:
    """The teachers' shares of the distillation term, summing to 1 (uniform unless given)."""
    if ce_only:
        return np.zeros(0)
    if mixture is None:
        return np.full(len(ids), 1.0 / len(ids))
    w = np.asarray(list(mixture), dtype=np.float64)
    if w.shape != (len(ids),):
        raise StudentError(f"{len(w)} weights for {len(ids)} teachers")
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise StudentError("teacher weights must be finite, non-negative and not all zero")
    return w / w.sum()


def _optimiser(model: torch.nn.Module, cfg: DistillConfig, total: int, steps_per_epoch: int):
    """AdamW and its schedule: linear warm-up, then cosine decay over ``total`` steps."""
    decay, no_decay = [], []
    for p in model.parameters():
        # Weight decay on norms and biases only shrinks the scales BatchNorm learns; standard practice skips them.
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = min(steps_per_epoch * 2, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    return opt, sched


def _distill(dataset: Dataset, repo: Repository | None, teacher_ids: Sequence[str], cfg: DistillConfig,
             mixture: Sequence[float] | None, device: str | torch.device | None, show_progress: bool,
             on_progress: ProgressFn | None, on_epoch: Callable[[dict[str, list]], None] | None) -> Student:
    t_start = time.perf_counter()
    dev = resolve_device(device)
    C = dataset.num_classes
    ids = [] if cfg.ce_only else list(teacher_ids)
    if not cfg.ce_only and not ids:
        raise StudentError("no teacher given: name at least one, or set ce_only for a cross-entropy-only student")
    if len(set(ids)) != len(ids):
        raise StudentError("a teacher is named twice")
    w = _teacher_mixture(ids, mixture, cfg.ce_only)
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

    # 1. Teachers: their models (kept for the per-view forwards) and, from the clean train split, their terms of
    # the distillation method (KD_METHODS: the ground cost for OT, the class centres for prototype KD).
    make_term = KD_METHODS.get(cfg.kd).fn
    t_models, t_terms = [], []
    for t in teachers:
        report(0.0, f"teacher {t.id}: ground cost")
        model = t.load_model(dev)
        out = extract(t, train, model=model, device=dev)
        t_terms.append(make_term(out, train.labels, C, cfg, dev))
        t_models.append(model)

    # 2. The student. Seeds: the model init from a forked global RNG (timm draws from it) so the caller's stream
    # is untouched; shuffling and augmentation from their own generators.
    fork = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        try:
            model = build_model(cfg.student_arch, C, in_cfg.channels, cfg.student_kwargs)
        except TeacherError as e:
            raise StudentError(f"bad student: {e}") from e
    model = prepare_model(model, dev)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    # 3. The views: epoch e trains on augmented view e % n_views, whose teacher logits are computed once.
    n_views = cfg.teacher_views if cfg.augment else 1
    view_cache: dict[int, list[torch.Tensor]] = {}

    def view(e: int) -> tuple[np.ndarray, list[torch.Tensor], Mix | None]:
        """Epoch ``e``'s images, every teacher's logits on them and the view's mixing (None: none); view
        ``e % n_views``, generated by seed."""
        v = e % n_views
        if cfg.augment:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + v)
            images = augment_images(train.images, gen, hflip=cfg.hflip)
        else:
            images = train.images
        mix = None
        if cfg.mixup > 0:
            images, mix = mix_images(images, cfg.mixup, cfg.seed * 100_003 + v)
            mix = Mix(mix.partner.to(dev), mix.weight.to(dev))
        if v not in view_cache:
            logits = []
            with torch.inference_mode():
                for t, tm, term in zip(teachers, t_models, t_terms):
                    with autocast(dev):  # bf16 on CUDA, nothing on the CPU
                        z = [term.logits(tm, inference_batch(x, dev)).float()
                             for x in iter_batches(images, t.input, 64)]
                    z = torch.cat(z).to(dev)
                    logits.append(term.view_logits(z) if hasattr(term, "view_logits") else z)
            view_cache[v] = logits
        return images, view_cache[v], mix

    # 4. The optimiser, over optimiser steps rather than passes: ten shots of three classes make one batch an
    # epoch, so by default small data gets more epochs to train enough (plan_schedule).
    schedule = plan_schedule(cfg, N)
    epochs, total, steps_per_epoch = schedule["epochs"], schedule["steps"], schedule["steps_per_epoch"]
    opt, sched = _optimiser(model, cfg, total, steps_per_epoch)

    # 5. Training: CE on the labels plus λτ² × the teachers' mixed distillation term.
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
        images, t_logits, mix = view(epoch)
        model.train()
        s_loss = s_ce = s_kd = 0.0
        n_correct = 0
        for idx in _batches(N, cfg.batch_size, shuffle_gen):
            idx_d = idx.to(dev)
            with autocast(dev):
                logits = model(to_device(to_tensor(images[idx.numpy()], in_cfg), dev))
            logits = logits.float()  # the losses (Sinkhorn above all) in full precision
            y = y_all[idx_d]
            if mix is None:
                ce = F.cross_entropy(logits, y)
            else:  # the blend's label is the same blend of the two labels
                lam_b, y2 = mix.weight[idx_d], y_all[mix.partner[idx_d]]
                ce = (lam_b * F.cross_entropy(logits, y, reduction="none")
                      + (1 - lam_b) * F.cross_entropy(logits, y2, reduction="none")).mean()
            kd_term = torch.zeros((), device=dev)  # the mixed distillation term (OT, or KL under kd="proto")
            for wt, tl, term in zip(w, t_logits, t_terms):
                # Instance weights read the true class, which a blend does not have.
                kd_term = kd_term + float(wt) * term.loss(tl[idx_d], logits, y if mix is None else None)
            loss = ce + kd_scale * kd_term if ids else ce
            if not math.isfinite(loss_v := loss.item()):
                raise StudentError(
                    f"training stopped: the loss became {loss_v} at epoch {epoch + 1} (cross-entropy {ce.item()}, "
                    f"distillation term {kd_term.item()}); a teacher with non-finite outputs, or lam/lr too large")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(idx)
            s_loss += loss_v * b
            s_ce += ce.item() * b
            s_kd += kd_term.item() * b
            n_correct += int((logits.argmax(1) == y).sum())
        val_acc = _accuracy(model, val_x, val_y, in_cfg, dev) if len(val_y) else None
        curves["epoch"].append(epoch + 1)
        curves["loss"].append(s_loss / N)
        curves["ce"].append(s_ce / N)
        curves["kd"].append(s_kd / N if ids else None)
        curves["ot"].append(s_kd / N if ids and cfg.kd == "ot" else None)
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
    bad = [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise StudentError(f"training stopped: the student's weights are not finite ({', '.join(bad[:3])})")

    # 6. The student and what it was made from.
    model.eval()
    metrics = {
        "train_accuracy": _accuracy(model, train.images, train.labels, in_cfg, dev),
        "val_accuracy": _accuracy(model, val_x, val_y, in_cfg, dev) if len(val_y) else None,
        "n_train": int(N),
        "n_val": int(len(val_y)),
        "epochs": epochs,
        "steps": total,
        "schedule": schedule,
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
