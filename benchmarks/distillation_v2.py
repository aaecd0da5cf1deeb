"""Distillation v2 on benchmark v2 (issue 14): does the default distillation beat cross-entropy and the prototype
baseline, with the teacher the ranking itself picks?

For each task of the chosen halves: the teacher the product's default ranking metric puts first in the task's pool
(scored on the train split, as a user's ranking would), then 3 seeds of each method at ground truth B's budget
(``groundtruth.B_DISTILL``: the ``micro`` student, 2 teacher views, the default schedule), a method changing what
its brackets name (``ot[lam=0.1;teacher_views=10]``): ``ce`` (no teacher: B's CE-only cells), ``ot`` (B's own
cells: the OT term), ``proto`` (the prototype cross-task KD baseline), the product's default, and the CE-only
control of every method with other views (:func:`matched_ce`), against which its gain is counted. Cells are cached with the ground truth's (``benchmarks/.cache/gt``), so a
rerun only recomputes what is missing. Also per task: the chosen teacher's linear-probe accuracy on the same test
set (logistic regression on its features of the train split), and per student size its parameters, MB and ONNX
latency at batch 1 on the CPU.

    python -m benchmarks.distillation_v2 --halves dev          # choose on the dev half
    python -m benchmarks.distillation_v2 --halves dev,test     # report (the test half once)

Writes ``results/distillation.{md,json}`` (the v1 benchmark's are ``distillation_v1.*``): ``default_method`` and ``summary[half][method]`` =
``{accuracy, accuracy_ci, gain_vs_ce, gain_vs_ce_ci, worst_task_gain_vs_ce, tasks_better_than_ce}``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import groundtruth as gtm
from benchmarks._common import limit_threads, machine, machine_md, md_table, write_results
from benchmarks.stats import bootstrap_ci

# B's budget (2 views) and the product's default with its own controls: the CE-only student and the prototype
# baseline at the same views (see :data:`CONTROL_OPTIONS`).
METHODS = ("ce", "ot", "proto", "proto[lam=0.1]", "ot[lam=0.1]", "ce[teacher_views=10]", "proto[teacher_views=10]",
           "ot[lam=0.1;teacher_views=10]")


def default_method() -> str:
    """The product's default distillation under this benchmark's method names: its term, with its λ, views and
    mixup in brackets where they differ from B's."""
    from hubscout.distill import DistillConfig

    d = DistillConfig()
    opts = [f"{k}={getattr(d, k):g}" for k in ("lam", "teacher_views", "mixup") if getattr(d, k) != gtm.B_DISTILL[k]]
    return f"{d.kd}[{';'.join(opts)}]" if opts else d.kd


def _options(method: str) -> tuple[str, list[tuple[str, str]]]:
    """``"ot[lam=0.1;teacher_views=10]"`` → ``("ot", [("lam", "0.1"), ("teacher_views", "10")])``."""
    kd, _, opts = method.rstrip("]").partition("[")
    return kd, [tuple(o.split("=", 1)) for o in opts.split(";") if o]


def method_budget(method: str) -> dict[str, Any] | None:
    """The distillation overrides of a method's cells (None: B's own budget, whose cells B computes). A method is
    a ``kd`` name, optionally with options: ``"ot[lam=0.1]"``, ``"proto[lam=0.3;tau=2]"``."""
    if method in ("ce", "ot"):
        return None
    import dataclasses

    from hubscout.distill import DistillConfig

    kd, opts = _options(method)
    ints = {f.name for f in dataclasses.fields(DistillConfig) if f.type in ("int", "int | None")}
    extra = {k: int(v) if k in ints else float(v) for k, v in opts}
    # A CE-only control with other views: its kd is B's, unused by a CE-only student.
    return {**gtm.B_DISTILL, "kd": gtm.B_DISTILL["kd"] if kd == "ce" else kd, **extra}


def chosen_teacher(train, repo, pool: list[str], outputs, metric: str | None = None) -> tuple[str, str, dict]:
    """The pool teacher a ranking metric (default: the product's) puts first on the train split."""
    from hubscout.extract import outputs_for
    from hubscout.rank import order_entries, score_teacher
    from hubscout.scores import DEFAULT_METRIC

    metric = metric or DEFAULT_METRIC
    entries = [score_teacher(outputs_for(repo.get(tid), train, outputs, device="cpu")[0], repo.get(tid), train,
                             [metric]) for tid in pool]
    ordered = order_entries(entries, metric)
    return ordered[0].teacher_id, metric, {e.teacher_id: e.scores[metric] for e in ordered}


def linear_probe(teacher, train, test, outputs) -> float:
    """Test accuracy of a logistic regression on the teacher's features (fit on the train split only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hubscout.extract import outputs_for

    f_tr = outputs_for(teacher, train, outputs, device="cpu")[0].features
    f_te = outputs_for(teacher, test, outputs, device="cpu")[0].features
    sc = StandardScaler().fit(f_tr)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(f_tr), train.labels)
    return float((clf.predict(sc.transform(f_te)) == test.labels).mean())


def student_cost(n_classes: int, channels: int, side: int) -> dict[str, Any]:
    """The ``micro`` student's parameters, MB of float32 weights and the latency at batch 1 (median of 50 runs,
    one thread) of its ONNX file as users download it (:func:`hubscout.export.export_onnx`)."""
    import tempfile

    import onnxruntime as ort
    import torch

    from hubscout.export import INPUT_NAME, export_onnx
    from hubscout.students import fit_student, student_side
    from hubscout.teachers import InputConfig, build_model

    choice = fit_student(gtm.B_DISTILL["student_arch"], {}, n_classes, (side, side, channels), None, [])
    torch.manual_seed(0)
    model = build_model(choice.arch, n_classes, channels, dict(choice.kwargs)).eval()
    in_cfg = InputConfig(student_side(side, None), channels, (0.5,) * channels, (0.5,) * channels)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort.InferenceSession(str(export_onnx(model, in_cfg, Path(tmp) / "student.onnx")), so,
                                    providers=["CPUExecutionProvider"])
    x = {INPUT_NAME: np.zeros((1, channels, in_cfg.size, in_cfg.size), dtype=np.float32)}
    for _ in range(5):
        sess.run(None, x)
    ts = []
    for _ in range(50):
        t0 = time.perf_counter()
        sess.run(None, x)
        ts.append(time.perf_counter() - t0)
    return {"size": choice.size, "params": choice.params, "mb": round(choice.params * 4 / 2 ** 20, 3),
            "onnx_latency_ms_b1": round(1000 * float(np.median(ts)), 3)}


# Options of a method that change what the student sees, not what the teacher says: its CE-only control has them
# too. With 2 views the student sees 2 augmentations of each image; with 10 it sees 10, and that alone moved the
# CE-only student by 5 to 25 points on the dev half, so a method must be compared with the CE-only student of the
# same views, or it is credited with what the augmentation did.
CONTROL_OPTIONS = ("teacher_views", "mixup", "student_arch", "epochs", "min_steps")


def matched_ce(method: str) -> str:
    """The CE-only control of ``method``: ``ce`` with the method's :data:`CONTROL_OPTIONS` (``"ce"`` when it has
    none), e.g. ``ot[lam=0.1;teacher_views=10]`` → ``ce[teacher_views=10]``."""
    kept = [f"{k}={v}" for k, v in _options(method)[1] if k in CONTROL_OPTIONS]
    return f"ce[{';'.join(kept)}]" if kept else "ce"


def summarise(per_task: list[dict[str, Any]], methods) -> dict[str, Any]:
    """Per method: accuracy, and the gain over its matched CE-only control (:func:`matched_ce`), which must be
    among the methods run."""
    out = {}
    for m in methods:
        ce = matched_ce(m)
        rows = [t for t in per_task if t["accuracy"].get(m) is not None and t["accuracy"].get(ce) is not None]
        if not rows:
            continue
        acc = [t["accuracy"][m] for t in rows]
        gain = [100 * (t["accuracy"][m] - t["accuracy"][ce]) for t in rows]
        out[m] = {"n_tasks": len(rows), "ce_control": ce, "accuracy": float(np.mean(acc)),
                  "accuracy_ci": bootstrap_ci(acc),
                  "gain_vs_ce": float(np.mean(gain)), "gain_vs_ce_ci": bootstrap_ci(gain),
                  "worst_task_gain_vs_ce": float(np.min(gain)),
                  "tasks_better_than_ce": int(np.sum(np.array(gain) > 0))}
    return out


def ot_vs_ce_every_teacher(tasks, repo, cache) -> dict[str, Any]:
    """Ground truth B against its CE-only reference for every teacher of every task whose cells are done: what
    the pinned OT term adds to the same student, teacher by teacher (points)."""
    from benchmarks import bench_zoo
    from benchmarks.ranking import task_ground_truth
    from benchmarks.tasks import pool_ids

    gains, per_task = [], {}
    for task in tasks:
        pool = [t for t in pool_ids(task, bench_zoo.catalogue()) if t in repo]
        gt = task_ground_truth(cache, task, repo, pool, gtm.SEEDS)
        ce = gt["ce_only"]["mean"] if gt["ce_only"]["n_seeds"] == len(gtm.SEEDS) else None
        if ce is None or not gt["distillation"]["complete"]:
            continue
        g = [100 * (a - ce) for a in gt["distillation"]["accuracy"].values()]
        gains += g
        per_task[task["id"]] = {"mean_gain": float(np.mean(g)), "max_gain": float(np.max(g)), "n": len(g),
                                "better": int(np.sum(np.array(g) > 0))}
    return {"pairs": len(gains), "mean_gain": float(np.mean(gains)) if gains else None,
            "gain_ci": bootstrap_ci(gains), "better_than_ce": int(np.sum(np.array(gains) > 0)),
            "per_task": per_task}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--halves", default="dev")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-compute", action="store_true", help="report from cached cells only")
    ap.add_argument("--ranking-metric", default=None, help="the metric that picks the teacher (default: the "
                    "product's default)")
    ap.add_argument("--tasks", default=None, help="comma list of task ids (default: every task of the halves)")
    ap.add_argument("--out", default="distillation", help="results/<out>.{md,json} (another name for a trial)")
    ap.add_argument("--cells-only", action="store_true", help="compute the missing cells, write no report (a half "
                    "computed ahead of its one report)")
    args = ap.parse_args(argv)
    limit_threads(1)
    import torch

    torch.set_flush_denormal(True)
    from functools import lru_cache

    from benchmarks import bench_zoo
    from benchmarks.tasks import load_manifest, pool_ids, task_data
    from hubscout.extract import FileCache
    from hubscout.teachers import Repository

    halves = args.halves.split(",")
    methods = args.methods.split(",")
    repo = Repository(bench_zoo.ZOO_DIR)
    outputs = FileCache(gtm.OUTPUTS)
    cache = gtm.CellCache()
    per_task, costs = [], {}
    tasks = [t for t in load_manifest() if t["half"] in halves and (not args.tasks or t["id"] in args.tasks.split(","))]
    for task in gtm.task_order(tasks):
        data = lru_cache(maxsize=1)(lambda task=task: (task_data(task, "train"), task_data(task, "test")))
        train, test = data()
        pool = [t for t in pool_ids(task, bench_zoo.catalogue()) if t in repo]
        tid, metric, _ = chosen_teacher(train, repo, pool, outputs, args.ranking_metric)
        accs: dict[str, float | None] = {}
        seeds_acc: dict[str, list[float]] = {}
        for m in methods:
            kind = "ce" if m.partition("[")[0] == "ce" else "distillation"
            cells = [gtm.cell(cache, kind, task, repo, None if kind == "ce" else tid, s, data, outputs_cache=outputs,
                              compute=not args.no_compute, distill=method_budget(m)) for s in gtm.SEEDS]
            got = [c["accuracy"] for c in cells if c is not None]
            seeds_acc[m] = got
            accs[m] = float(np.mean(got)) if len(got) == len(gtm.SEEDS) else None
        if args.cells_only:
            print(f"cells done: {task['id']}", flush=True)
            continue
        key = (train.num_classes, train.images.shape[-1], int(train.images.shape[1]))
        if key not in costs:
            costs[key] = student_cost(*key)
        entry = {"id": task["id"], "half": task["half"], "relation": task["relation"], "teacher": tid,
                 "ranking_metric": metric, "teacher_params": repo.get(tid).num_params,
                 "teacher_linear_probe": linear_probe(repo.get(tid), train, test, outputs),
                 "accuracy": accs, "seed_accuracy": seeds_acc, "student": costs[key]}
        per_task.append(entry)
        print(f"{task['id']:40} {tid:28} " + " ".join(
            f"{m}={a:.3f}" if a is not None else f"{m}=-" for m, a in accs.items()), flush=True)
    if args.cells_only:
        return {}
    # Every half is a key, an empty one until its tasks are computed, so readers need not guess.
    summary = {h: summarise([t for t in per_task if h == "all" or t["half"] == h], methods)
               for h in ("dev", "test", "all")}
    every = ot_vs_ce_every_teacher(tasks, repo, cache)
    result = {"benchmark": "distillation-v2", "default_method": default_method(), "halves": halves,
              "budget": gtm.distill_budget(0), "methods": methods, "machine": machine(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": per_task,
              "summary": summary, "ot_vs_ce_every_teacher": every}
    md = ["# Distillation v2 (issue 14)", "", machine_md(result["machine"]), "",
          f"Default method: `{result['default_method']}`. Budget: ground truth B's (`micro` student, 2 teacher "
          "views, default schedule) with what a method's brackets change; the teacher is the default ranking's "
          "first; 3 seeds. Each method is compared with the CE-only student of the same views (its control): more "
          "augmented views alone lift the CE-only student by 5 to 25 points on the dev half.", ""]
    for h, s in summary.items():
        if not s:
            md += [f"## {h}", "", "No task of this half computed yet.", ""]
            continue
        md += [f"## {h}", "", md_table(
            ["method", "accuracy [95% CI]", "its CE-only control", "gain vs that CE (points) [95% CI]",
             "worst task gain", "tasks > CE"],
            [[m, f"{v['accuracy']:.3f} [{v['accuracy_ci'][0]:.3f}, {v['accuracy_ci'][1]:.3f}]", v["ce_control"],
              f"{v['gain_vs_ce']:+.1f} [{v['gain_vs_ce_ci'][0]:+.1f}, {v['gain_vs_ce_ci'][1]:+.1f}]",
              f"{v['worst_task_gain_vs_ce']:+.1f}", f"{v['tasks_better_than_ce']}/{v['n_tasks']}"]
             for m, v in s.items()]), ""]
    if every["pairs"]:
        md += ["## The pinned OT term against CE, every teacher (ground truth B)", "",
               f"Over {every['pairs']} (task, teacher) pairs of the tasks above whose B cells are done: mean gain "
               f"{every['mean_gain']:+.1f} points [{every['gain_ci'][0]:+.1f}, {every['gain_ci'][1]:+.1f}], better "
               f"than CE for {every['better_than_ce']}.", "", md_table(
                   ["task", "teachers", "mean gain", "best teacher's gain", "teachers > CE"],
                   [[k, v["n"], f"{v['mean_gain']:+.1f}", f"{v['max_gain']:+.1f}", v["better"]]
                    for k, v in every["per_task"].items()]), ""]
    md += ["## Per task", "", md_table(
        ["task", "half", "teacher", "linear probe", *methods, "student params / MB / ONNX ms"],
        [[t["id"], t["half"], t["teacher"], f"{t['teacher_linear_probe']:.3f}",
          *[f"{t['accuracy'][m]:.3f}" if t["accuracy"][m] is not None else "-" for m in methods],
          f"{t['student']['params']:,} / {t['student']['mb']} / {t['student']['onnx_latency_ms_b1']}"]
         for t in per_task])]
    write_results(args.out, result, "\n".join(md) + "\n")
    print("\n".join(md[:40]))
    return result


if __name__ == "__main__":
    main()
