"""The two ground truths of benchmark v2 (see ``benchmarks/PROTOCOL.md``), computed and cached cell by cell.

* **A, transfer** (:func:`transfer_cell`): fine-tune one teacher on the task's train split; learning rate and
  number of steps chosen from a small grid on a validation split cut from the train split; the test accuracy of
  the chosen checkpoint. Small teachers are fine-tuned whole (new C-way head); teachers whose input is 128 px or
  more (the ImageNet EfficientNet-Lites) keep their trunk frozen and train a new head on their cached pooled
  features.
* **B, distillation** (:func:`distillation_cell`): the test accuracy of the student distilled from that teacher
  alone with the distillation method the product defaulted to, at the benchmark's budget (:data:`B_DISTILL`: one
  fixed ``micro`` student, 2 teacher views; PROTOCOL.md §3, amendment 2).

A cell is (kind, task data, teacher weights sha256, budget, seed); its key is a hash of those (:func:`cell_key`,
never the task's pool, relation or half, which do not change the cell), and its result one small JSON file under
``benchmarks/.cache/gt/``, written atomically, so several workers can share the work and any run resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from benchmarks._common import ROOT, RESULTS

CACHE = ROOT / "benchmarks" / ".cache"
CELLS = CACHE / "gt"
OUTPUTS = CACHE / "outputs"  # frozen teacher outputs (hubscout.extract.FileCache)
CONSOLIDATED = RESULTS / "ground_truth_v2.json"  # every finished cell, committed with the report
SEEDS = (0, 1, 2)
KINDS = ("transfer", "distillation", "ce")
CELL_VERSION = 1
FROZEN_MIN_SIZE = 128  # teachers with inputs at least this large are transferred on cached frozen features


@dataclasses.dataclass(frozen=True)
class TransferBudget:
    """The grid of ground truth A. ``checkpoints`` are the step counts compared on the validation split (one run
    per learning rate, evaluated at each); ``val_fraction`` of each class's shots (at least one) is validation."""

    lrs_finetune: tuple[float, ...] = (3e-4, 3e-3)
    lrs_head: tuple[float, ...] = (1e-3, 1e-2)
    checkpoints: tuple[int, ...] = (25, 50, 100, 150)
    batch_size: int = 32
    weight_decay: float = 0.01
    val_fraction: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TRANSFER = TransferBudget()


def task_fingerprint(task: dict[str, Any]) -> dict[str, Any]:
    """What fixes a task's data: the cache key ignores its id, pool, relation and half."""
    return {k: task[k] for k in ("source", "parts", "shots", "seed", "test_per_class")}


def cell_key(kind: str, task: dict[str, Any], teacher_sha: str, budget: dict[str, Any], seed: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown cell kind {kind!r}")
    blob = json.dumps([CELL_VERSION, kind, task_fingerprint(task), teacher_sha, budget, int(seed)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# Ground truth B's budget (PROTOCOL.md §3, amendment 2, fixed before any B cell was computed): the distillation
# method the product defaulted to when the protocol was written, pinned here so that a later change of the
# product's defaults (the distillation issue may change them) never moves the ground truth, with one fixed small
# student for every teacher (the teacher is then the only thing a B cell varies, and one CE-only cell a task and
# seed is its reference) and 2 teacher views instead of 10 (the 224-px teachers' views were most of B's cost).
B_DISTILL = {"student_arch": "micro", "teacher_views": 2, "kd": "ot", "cost": "proto-softmax", "lam": 1.0,
             "tau": 4.0, "reg": 0.05, "epochs": None, "min_steps": None, "mixup": 0.0}

# Distillation options added after B's cells were first computed, with the value that means "off": a cell's key
# leaves them out at that value, so a new option never orphans the cells computed before it existed.
LATER_OPTIONS = {"mixup": 0.0}

# ``--quick`` only (its cells have their own keys): a tiny student budget, so that the smoke run stays short.
QUICK_DISTILL = {"student_arch": "test_resnet", "epochs": 3, "min_steps": 60, "teacher_views": 1}


def budget_key(budget: dict[str, Any]) -> dict[str, Any]:
    """What of a distillation budget goes into a cell's key: all of it but :data:`LATER_OPTIONS` left off."""
    return {k: v for k, v in budget.items() if not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}


def distill_budget(seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full distillation config of a B or CE cell: :data:`B_DISTILL` (or ``overrides``, e.g. the quick
    budget) over :class:`~hubscout.distill.DistillConfig`'s defaults, with ``seed``."""
    from hubscout.distill import DistillConfig

    return DistillConfig(**{**(B_DISTILL if overrides is None else overrides), "seed": seed}).to_dict()


# ------------------------------------------------------------------------------------------------ the cache

class CellCache:
    """One JSON file a cell under ``root``; the consolidated file (committed) seeds it."""

    def __init__(self, root: Path = CELLS, consolidated: Path | None = CONSOLIDATED):
        self.root = root
        self.consolidated = consolidated
        self._seed: dict[str, Any] | None = None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _seeded(self) -> dict[str, Any]:
        if self._seed is None:
            self._seed = {}
            if self.consolidated is not None and self.consolidated.is_file():
                self._seed = json.loads(self.consolidated.read_text()).get("cells", {})
        return self._seed

    def get(self, key: str) -> dict[str, Any] | None:
        p = self._path(key)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
        return self._seeded().get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True))
        tmp.replace(p)

    def items(self) -> Iterable[tuple[str, dict[str, Any]]]:
        seen = set()
        if self.root.is_dir():
            for p in sorted(self.root.glob("*/*.json")):
                try:
                    seen.add(p.stem)
                    yield p.stem, json.loads(p.read_text())
                except json.JSONDecodeError:
                    continue
        for k, v in self._seeded().items():
            if k not in seen:
                yield k, v

    def consolidate(self) -> int:
        """Write every finished cell into the consolidated file; returns how many."""
        cells = dict(sorted(self.items()))
        assert self.consolidated is not None
        self.consolidated.parent.mkdir(parents=True, exist_ok=True)
        self.consolidated.write_text(json.dumps({"version": CELL_VERSION, "cells": cells}, sort_keys=True,
                                                separators=(",", ":")) + "\n")
        return len(cells)


# ------------------------------------------------------------------------------------------------ A: transfer

def _split(labels: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fit/validation indices: ``fraction`` of each class (at least one) is validation."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        val.extend(idx[:n])
        fit.extend(idx[n:])
    return np.sort(np.array(fit)), np.sort(np.array(val))


def _select(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid point with the best validation accuracy; ties: lower validation loss, then fewer steps, smaller lr."""
    return min(grid, key=lambda g: (-g["val_acc"], g["val_loss"], g["steps"], g["lr"]))


def _train_eval(model, params, x_fit, y_fit, evals, lr: float, budget: TransferBudget, seed: int,
                forward) -> list[dict[str, Any]]:
    """AdamW at constant ``lr`` on minibatches of the fit split; validation and test scores at each checkpoint."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=budget.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_fit)
    out, step = [], 0
    for ck in budget.checkpoints:
        while step < ck:
            model.train()
            idx = torch.randperm(n, generator=gen)[: budget.batch_size]
            if len(idx) < 2:
                idx = torch.arange(n)
            loss = F.cross_entropy(forward(x_fit, idx), y_fit[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        rec = {"lr": lr, "steps": ck}
        with torch.inference_mode():
            for name, (x, y) in evals.items():
                logits = torch.cat([forward(x, torch.arange(s, min(s + 256, len(y)))) for s in range(0, len(y), 256)])
                rec[f"{name}_acc"] = float((logits.argmax(1) == y).float().mean())
                if name == "val":
                    rec["val_loss"] = float(F.cross_entropy(logits, y))
        out.append(rec)
    return out


def transfer_cell(teacher, train, test, seed: int, budget: TransferBudget = TRANSFER,
                  outputs_cache=None) -> dict[str, Any]:
    """Ground truth A for one teacher and seed (see the module docstring)."""
    import torch

    from hubscout.data import to_tensor
    from hubscout.extract import outputs_for

    t0 = time.perf_counter()
    C = train.num_classes
    fit, val = _split(train.labels, C, budget.val_fraction, seed)
    y = torch.from_numpy(train.labels)
    y_test = torch.from_numpy(test.labels)
    frozen = teacher.input.size >= FROZEN_MIN_SIZE
    torch.manual_seed(seed)
    grid: list[dict[str, Any]] = []
    if frozen:
        f_train = torch.from_numpy(outputs_for(teacher, train, outputs_cache, device="cpu")[0].features)
        f_test = torch.from_numpy(outputs_for(teacher, test, outputs_cache, device="cpu")[0].features)
        for lr in budget.lrs_head:
            torch.manual_seed(seed)
            head = torch.nn.Linear(f_train.shape[1], C)
            grid += _train_eval(head, head.parameters(), f_train[fit], y[fit],
                                {"val": (f_train[val], y[val]), "test": (f_test, y_test)}, lr, budget, seed,
                                lambda x, i: head(x[i]))
    else:
        x_train = to_tensor(train.images, teacher.input)
        x_test = to_tensor(test.images, teacher.input)
        for lr in budget.lrs_finetune:
            model = teacher.load_model("cpu")
            torch.manual_seed(seed)
            model.reset_classifier(C)
            grid += _train_eval(model, model.parameters(), x_train[fit], y[fit],
                                {"val": (x_train[val], y[val]), "test": (x_test, y_test)}, lr, budget, seed,
                                lambda x, i: model(x[i]))
    best = _select(grid)
    return {"accuracy": best["test_acc"], "chosen": {"lr": best["lr"], "steps": best["steps"]},
            "val_acc": best["val_acc"], "grid": grid, "frozen_trunk": frozen, "n_fit": int(len(fit)),
            "n_val": int(len(val)), "n_test": int(len(test)), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------- B: distillation

def distillation_cell(repo, teacher_id: str | None, train, test, seed: int,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ground truth B (``teacher_id``) or the CE-only reference (``None``, the same student) at B's budget."""
    from hubscout.distill import DistillConfig, distill, evaluate

    cfg = DistillConfig(**{**distill_budget(seed, overrides), "ce_only": teacher_id is None})
    t0 = time.perf_counter()
    student = distill(train, repo, [teacher_id] if teacher_id else [], cfg, device="cpu")
    t1 = time.perf_counter()
    acc = evaluate(student, test)["accuracy"]
    return {"accuracy": acc, "epochs": student.metrics["epochs"], "steps": student.metrics["steps"],
            "val_accuracy": student.metrics["val_accuracy"], "n_test": int(len(test)),
            "seconds": time.perf_counter() - t0, "distill_s": t1 - t0}


# ------------------------------------------------------------------------------------------------ the runner

def cell(cache: CellCache, kind: str, task: dict[str, Any], repo, teacher_id: str | None, seed: int, data,
         outputs_cache=None, compute: bool = True, distill: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The cached cell, computed (and stored) when missing and ``compute``; ``data`` gives (train, test)."""
    sha = "none" if kind == "ce" else repo.get(teacher_id).weights_sha256
    key = cell_key_for(kind, task, repo, teacher_id, seed, distill)
    hit = cache.get(key)
    if hit is not None or not compute:
        return hit
    train, test = data()
    cpu0 = time.process_time()  # CPU seconds too: wall time on a shared machine says little about an idle one
    if kind == "transfer":
        res = transfer_cell(repo.get(teacher_id), train, test, seed, outputs_cache=outputs_cache)
    else:
        res = distillation_cell(repo, teacher_id if kind == "distillation" else None, train, test, seed, distill)
    res["cpu_s"] = time.process_time() - cpu0
    res.update({"kind": kind, "task": task["id"], "teacher": teacher_id, "teacher_sha256": sha, "seed": seed,
                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    cache.put(key, res)
    print(f"  {kind:12} {task['id']:40} {teacher_id or '-':30} seed {seed}: acc {res['accuracy']:.3f} "
          f"({res['seconds']:.1f}s)", flush=True)
    return res


def task_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dev before test; inside a half, cheap tasks (few classes × shots) first, so partial runs cover most tasks."""
    return sorted(tasks, key=lambda t: (t["half"] != "dev", len(t["classes"]) * t["shots"], t["id"]))


def run(kinds: Iterable[str], halves: Iterable[str] = ("dev", "test"), seeds: Iterable[int] = SEEDS,
        task_ids: Iterable[str] | None = None, teacher_ids: Iterable[str] | None = None,
        max_cells: int | None = None) -> int:
    """Compute the missing cells of ``kinds`` (tasks in :func:`task_order`, every teacher of each pool, every
    seed); returns how many were computed. Safe to run several at once on different kinds."""
    from functools import lru_cache

    from benchmarks import bench_zoo
    from benchmarks.tasks import load_manifest, pool_ids, task_data
    from hubscout.extract import FileCache
    from hubscout.teachers import Repository

    repo = Repository(bench_zoo.ZOO_DIR)
    outputs = FileCache(OUTPUTS)
    cache = CellCache()
    tasks = [t for t in task_order(load_manifest()) if t["half"] in set(halves)
             and (task_ids is None or t["id"] in set(task_ids))]
    done = 0
    for task in tasks:
        data = lru_cache(maxsize=1)(lambda task=task: (task_data(task, "train"), task_data(task, "test")))
        # Pools come from the catalogue (what the repository will hold); a teacher not built yet is left for a
        # later run rather than silently changing the pool.
        pool = [t for t in pool_ids(task, bench_zoo.catalogue()) if teacher_ids is None or t in set(teacher_ids)]
        missing = [t for t in pool if t not in repo]
        if missing:
            print(f"  {task['id']}: not built yet, skipped: {', '.join(missing)}", flush=True)
        pool = [t for t in pool if t in repo]
        for kind in kinds:
            for tid in ([None] if kind == "ce" else pool):
                for seed in seeds:
                    if max_cells is not None and done >= max_cells:
                        return done
                    before = cache.get(cell_key_for(kind, task, repo, tid, seed))
                    cell(cache, kind, task, repo, tid, seed, data, outputs_cache=outputs)
                    done += before is None
    return done


def cell_key_for(kind: str, task: dict[str, Any], repo, teacher_id: str | None, seed: int,
                 distill: dict[str, Any] | None = None) -> str:
    if kind == "ce":
        return cell_key(kind, task, "none", dict(budget_key(distill_budget(seed, distill)), ce_only=True), seed)
    budget = TRANSFER.to_dict() if kind == "transfer" else budget_key(distill_budget(seed, distill))
    return cell_key(kind, task, repo.get(teacher_id).weights_sha256, budget, seed)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from benchmarks._common import limit_threads

    ap = argparse.ArgumentParser(description="compute benchmark v2 ground-truth cells (resumable)")
    ap.add_argument("--kinds", default="transfer,ce,distillation")
    ap.add_argument("--halves", default="dev,test")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--tasks", default=None, help="comma list of task ids (default: all)")
    ap.add_argument("--teachers", default=None, help="comma list of teacher ids (default: every pool teacher)")
    ap.add_argument("--max-cells", type=int, default=None)
    args = ap.parse_args(argv)
    limit_threads(1)
    import torch

    torch.set_flush_denormal(True)
    n = run(args.kinds.split(","), args.halves.split(","), [int(s) for s in args.seeds.split(",")],
            args.tasks.split(",") if args.tasks else None, args.teachers.split(",") if args.teachers else None,
            max_cells=args.max_cells)
    print(f"computed {n} cells", flush=True)


if __name__ == "__main__":
    main()
