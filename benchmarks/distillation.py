"""Distillation quality (issue 4): does the OT loss from the chosen teacher(s) give a better student?

For every task of the ranking benchmark, students trained with the same small budget, over 3 training seeds (the
few-shot training set itself is fixed: seed 0's draw), on a held-out test split:

* ``ce``: cross-entropy only, no teacher;
* ``ot-top1``: CE + the OT term from the teacher OT ranks first (the library's default cost);
* ``ot-top3``: CE + the OT terms of the top-3 teachers, weighted by relatedness (``weigh_teachers``);
* ``proto-top1``: CE + the prototype cross-task KD baseline (``DistillConfig(kd="proto")``: the teacher's
  feature-space centres of the target classes give it logits over the target classes; KL to the student, as in
  REFILLED, Ye et al. CVPR 2020) from the same top-1 teacher;
* ``oracle-top1`` (with ``--oracle``): CE + OT from the teacher whose student was best in the ranking ground
  truth (seed 0), when that ground truth is cached: how much a perfect ranking would add.

Teachers are ranked with the library's default ranking cost; the OT term uses the distillation's default cost.

Every student is cached in ``results/ground_truth.json`` (shared with ``benchmarks.ranking``, same keys), so a run
resumes where it stopped, and the ranking benchmark's seed-0 students are reused.

    python -m benchmarks.distillation [--quick] [--repo DIR] [--seeds 3] [--oracle]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, limit_threads, machine, machine_md, md_table, resolve_repo, write_results
from benchmarks.ranking_v1 import FULL_TASKS, QUICK_TASKS, _load_gt, budget, cached_student, gt_key

METHODS = ("ce", "ot-top1", "ot-top3", "proto-top1", "oracle-top1")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 tasks, 2 seeds, the quick zoo (< 5 min)")
    ap.add_argument("--repo", help="teacher repository (default: the full demo zoo if complete, else the quick zoo)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds per method (default 3; 2 with --quick)")
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--oracle", action="store_true", help="also distil from the ground truth's best teacher")
    args = ap.parse_args(argv)
    limit_threads(1)

    from hubscout.extract import FileCache
    from hubscout.rank import rank, weights_from_scores
    from hubscout.sources import TARGETS, demo_target
    from hubscout.teachers import Repository

    repo_dir = resolve_repo(args.repo, args.quick)
    repo = Repository(repo_dir)
    teachers = repo.list()[:5] if args.quick else repo.list()
    tids = [t.id for t in teachers]
    tasks = QUICK_TASKS if args.quick else FULL_TASKS
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    per_class = args.test_per_class or (100 if args.quick else 200)
    print(f"repo {repo_dir} ({len(tids)} teachers), {len(tasks)} tasks, seeds {seeds}", flush=True)

    gt = _load_gt()
    per_task: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name, shots in tasks:
        train = demo_target(name, shots, seed=0)
        test = demo_target(name, split="test", max_per_class=per_class, seed=0)
        srcs = {s for s, _ in TARGETS[name].parts}
        base = budget(args.quick, hflip=not (srcs & {"mnist", "digits"}))
        with tempfile.TemporaryDirectory() as tmp:
            ranking = rank(train, repo, metrics=["ot"], teacher_ids=tids, cache=FileCache(tmp), device="cpu")
        top = [e.teacher_id for e in ranking.entries]
        top3 = top[:3]
        w3 = weights_from_scores([e.scores["ot"] for e in ranking.entries[:3]])
        # The ranking ground truth's best teacher (seed 0, the same budget), when the ranking benchmark cached it.
        gt_acc = {t: gt.get(gt_key(name, shots, 0, repo.get(t).weights_sha256, base, test.sha256)) for t in tids}
        oracle = (max(gt_acc, key=lambda t: gt_acc[t]["accuracy"]) if args.oracle and all(gt_acc.values())
                  else None)
        print(f"task {name}-{shots}shot: OT top-3 {top3} (weights {np.round(w3, 2).tolist()}), "
              f"oracle {oracle}", flush=True)

        acc: dict[str, list[float]] = {m: [] for m in METHODS}
        for seed in seeds:
            cfg = dataclasses.replace(base, seed=seed)
            def student(ids, c, weights=None) -> float:
                return cached_student(gt, name, shots, 0, train, test, repo, ids, c, weights=weights)["accuracy"]

            acc["ce"].append(student([], dataclasses.replace(cfg, ce_only=True)))
            acc["ot-top1"].append(student(top[:1], cfg))
            acc["ot-top3"].append(student(top3, cfg, w3))
            acc["proto-top1"].append(student(top[:1], dataclasses.replace(cfg, kd="proto")))
            if oracle is not None:
                acc["oracle-top1"].append(student([oracle], cfg))
        per_task.append({"task": f"{name}-{shots}shot", "target": name, "shots": shots, "n_train": len(train),
                         "n_test": len(test), "top3": top3, "top3_weights": w3, "oracle": oracle,
                         "accuracy": acc,
                         "mean": {m: float(np.mean(v)) if v else None for m, v in acc.items()},
                         "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in acc.items()}})
        print("  " + ", ".join(f"{m} {per_task[-1]['mean'][m]:.3f}" for m in METHODS if acc[m]), flush=True)

    def avg(m: str) -> float | None:
        vals = [t["mean"][m] for t in per_task if t["mean"][m] is not None]
        return float(np.mean(vals)) if vals else None

    methods = [m for m in METHODS if any(t["accuracy"][m] for t in per_task)]
    summary = {m: {"mean_accuracy": avg(m),
                   "mean_gain_over_ce": (float(np.mean([t["mean"][m] - t["mean"]["ce"] for t in per_task
                                                        if t["mean"][m] is not None]))
                                         if any(t["mean"][m] is not None for t in per_task) else None),
                   "tasks_better_than_ce": int(sum(1 for t in per_task if t["mean"][m] is not None
                                                   and t["mean"][m] > t["mean"]["ce"]))}
               for m in methods}
    mach = machine()
    cfg_d = budget(args.quick, True).to_dict()
    payload = {"benchmark": "distillation", "quick": args.quick, "machine": mach, "repo": str(repo_dir),
               "teachers": tids, "seeds": seeds, "budget": cfg_d, "test_per_class": per_class, "tasks": per_task,
               "summary": summary, "wall_s": time.perf_counter() - t_start}

    def cell(t: dict, m: str) -> str:
        if t["mean"][m] is None:
            return "–"
        return f"{t['mean'][m]:.3f} ± {t['std'][m]:.3f}" if t["std"][m] is not None else f"{t['mean'][m]:.3f}"

    name = "distillation_v1_quick" if args.quick else "distillation_v1"
    md = [f"# Distillation quality{' (--quick)' if args.quick else ''}\n", machine_md(mach),
          f"\nRepository `{repo_dir}` ({len(tids)} teachers). {len(per_task)} tasks, training seeds {seeds} (the "
          f"few-shot training set is fixed). Student `{cfg_d['student_arch']}`, epochs={cfg_d['epochs']}, "
          f"min_steps={cfg_d['min_steps']}, teacher_views={cfg_d['teacher_views']}: the ranking benchmark's small "
          f"budget, not the library's defaults (student auto: never larger than the teacher, at most 5 M parameters; "
          f"40 epochs or ≥300 steps; 10 views), so absolute accuracies "
          f"are lower than a user gets. Test: ≤{per_class} held-out images a class.\n",
          "\n## Mean over tasks\n\n",
          md_table(["method", "mean accuracy", "mean gain over CE (points)", "tasks better than CE"],
                   [[m, summary[m]["mean_accuracy"] if summary[m]["mean_accuracy"] is not None else "–",
                     100 * summary[m]["mean_gain_over_ce"] if summary[m]["mean_gain_over_ce"] is not None else "–",
                     f"{summary[m]['tasks_better_than_ce']} / {len(per_task)}"] for m in methods]),
          "\n## Per task (accuracy, mean ± std over seeds)\n\n",
          md_table(["task", "OT top-3 teachers"] + (["oracle"] if args.oracle else []) + methods,
                   [[t["task"], ", ".join(t["top3"])] + ([t["oracle"] or "–"] if args.oracle else [])
                    + [cell(t, m) for m in methods] for t in per_task]),
          f"\n![mean accuracy per method]({name}.png)\n"]
    _plot(summary, RESULTS / f"{name}.png")
    write_results(name, payload, "".join(md))
    print(f"wrote {RESULTS / name}.md/.json/.png in {payload['wall_s']:.0f}s", flush=True)
    return payload


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [m for m in summary if summary[m]["mean_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(ms, [summary[m]["mean_accuracy"] for m in ms],
           color=["tab:gray" if m == "ce" else "tab:blue" if m.startswith("ot") else "tab:orange" for m in ms])
    lo = min(summary[m]["mean_accuracy"] for m in ms)
    ax.set_ylim(max(0.0, lo - 0.1), None)
    ax.set_ylabel("mean test accuracy over tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
