"""Ranking quality (issue 4): do the transferability metrics order the teachers as distillation does?

For every target task (a demo target at some number of shots) and every teacher of the repository, the ground
truth is the held-out test accuracy of a small student distilled from that teacher alone with a fixed, small
budget: exactly the enumeration that ranking is meant to avoid. Each metric (OT with each ground cost, LEEP, NCE,
H-score, LogME, and a random ranking) is compared with it by weighted Kendall tau (scipy.stats.weightedtau, both
sides oriented so that higher = better), top-1 hit rate and regret (best accuracy minus the accuracy of the
teacher the metric puts first). Ground-truth results are cached in ``results/ground_truth.json``.

    python -m benchmarks.ranking_v1 [--quick] [--repo DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, limit_threads, machine, machine_md, md_table, resolve_repo, write_results

COSTS = ("proto", "proto-softmax", "proto-centred", "proto-softmax-centred", "joint")
BASELINES = ("leep", "nce", "hscore", "logme")
GT_FILE = RESULTS / "ground_truth.json"
# The ground-truth students are distilled with one fixed cost whatever the library's default, so that changing the
# default does not silently change (and recompute) the ground truth the costs are judged by.
GT_COST = "proto-softmax"

# (target, shots): 14 tasks, every demo target and every shot count in {5, 10, 20, 50}.
FULL_TASKS = [
    ("footwear", 5), ("footwear", 50), ("fashion-tops", 10), ("fashion-all", 20), ("animals-farm", 5),
    ("animals-farm", 20), ("animals-wild", 10), ("animals-all", 50), ("digits-mnist", 10), ("mnist-odd", 20),
    ("handwritten", 5), ("handwritten", 50), ("pets-and-bags", 10), ("pets-and-bags", 20),
]
QUICK_TASKS = [("footwear", 10), ("pets-and-bags", 10), ("handwritten", 10)]


def budget(quick: bool, hflip: bool):
    from hubscout.distill import DistillConfig

    if quick:
        return DistillConfig(student_arch="test_resnet", epochs=4, min_steps=100, teacher_views=1, batch_size=32,
                             hflip=hflip, seed=0, cost=GT_COST, lam=1.0)
    # λ pinned at the value the v1 results were computed with (the library's default became 0.1 later).
    return DistillConfig(student_arch="test_resnet", epochs=5, min_steps=100, teacher_views=1, batch_size=32,
                         hflip=hflip, seed=0, cost=GT_COST, lam=1.0)


def relation(target_classes: list[str], teachers) -> str:
    """inside: one teacher knows every target class; overlapping: some teacher knows some; outside: none does."""
    tc = set(target_classes)
    if any(tc <= set(t.labels) for t in teachers):
        return "inside"
    if any(tc & set(t.labels) for t in teachers):
        return "overlapping"
    return "outside"


def relation_views(target_classes: list[str], teachers) -> dict[str, list[str]]:
    """The task seen against three repositories cut from the zoo, so that every relation is measured with the
    same ground truth (a teacher's student does not depend on which other teachers exist): ``inside`` (all
    teachers, some of which know every target class), ``overlapping`` (without the teachers that know them all;
    kept when a remaining one knows some) and ``outside`` (without any teacher that knows a target class; kept
    when at least 3 remain)."""
    tc = set(target_classes)
    views = {relation(target_classes, teachers): [t.id for t in teachers]}
    partial = [t for t in teachers if not tc <= set(t.labels)]
    if relation(target_classes, partial) == "overlapping":
        views.setdefault("overlapping", [t.id for t in partial])
    unrelated = [t for t in teachers if not tc & set(t.labels)]
    if len(unrelated) >= 3:
        views.setdefault("outside", [t.id for t in unrelated])
    return views


def _load_gt() -> dict[str, Any]:
    if GT_FILE.is_file():
        try:
            return json.loads(GT_FILE.read_text())
        except json.JSONDecodeError:
            pass
    return {}


def _save_gt(gt: dict[str, Any]) -> None:
    """Write ``gt`` merged into what is on disk: the ranking and distillation benchmarks may run side by side."""
    GT_FILE.parent.mkdir(parents=True, exist_ok=True)
    merged = {**_load_gt(), **gt}
    gt.update(merged)
    tmp = GT_FILE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    tmp.replace(GT_FILE)


# Distillation options added after ground truth was first cached; at these defaults they leave the key unchanged.
_LATER_OPTIONS = {"kd": "ot", "proto_temperature": 0.1, "max_epochs": None}


def gt_key(task: str, shots: int, seed: int, teacher_sha: str, cfg, test_sha: str) -> str:
    c = {k: v for k, v in cfg.to_dict().items() if not (k in _LATER_OPTIONS and v == _LATER_OPTIONS[k])}
    blob = json.dumps([task, shots, seed, teacher_sha, c, test_sha], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_student(gt: dict, task: str, shots: int, seed: int, train, test, repo, teacher_ids: list[str], cfg,
                   weights=None, label: str | None = None) -> dict[str, Any]:
    """Distil a student from ``teacher_ids`` (none: CE only) and evaluate it on ``test``, unless ``gt`` already
    holds it; the ranking and distillation benchmarks share this cache. ``seed`` is the task draw's seed (the
    training seed is ``cfg.seed``); ``label`` names the student in the record and the log."""
    from hubscout.distill import distill, evaluate

    ids = [] if cfg.ce_only else list(teacher_ids)
    sha = "+".join(repo.get(t).weights_sha256 for t in ids) if ids else "none"
    if len(ids) > 1:
        sha += "|w=" + ",".join(f"{w:.4f}" for w in weights)
    key = gt_key(task, shots, seed, sha, cfg, test.sha256)
    if key not in gt:
        label = label or "+".join(ids) or "__ce_only__"
        t0 = time.perf_counter()
        student = distill(train, repo, ids, cfg, mixture=weights if len(ids) > 1 else None, device="cpu")
        t1 = time.perf_counter()
        acc = evaluate(student, test)["accuracy"]
        gt[key] = {"task": task, "shots": shots, "seed": seed, "teacher": label, "accuracy": acc,
                   "distill_s": t1 - t0, "eval_s": time.perf_counter() - t1, "n_test": len(test),
                   "config": cfg.to_dict()}
        _save_gt(gt)
        print(f"  gt {task}-{shots} {label} kd={cfg.kd} seed {cfg.seed}: acc {acc:.3f} ({t1 - t0:.1f}s)", flush=True)
    return gt[key]


def ground_truth(train, test, repo, teachers, cfg, task: str, shots: int, seed: int, gt: dict) -> dict[str, Any]:
    """Accuracy of the student distilled from each teacher (and of a CE-only student); cached in ``gt``."""
    import dataclasses

    jobs = [(t.id, [t.id], cfg) for t in teachers]
    jobs.append(("__ce_only__", [], dataclasses.replace(cfg, ce_only=True)))
    # Seed noise of the ground truth: the CE-only student at other seeds (same data, same budget).
    jobs += [(f"__ce_only_seed{s}__", [], dataclasses.replace(cfg, ce_only=True, seed=s)) for s in (1, 2)]
    return {tid: cached_student(gt, task, shots, seed, train, test, repo, ids, c, label=tid) for tid, ids, c in jobs}


def oriented(entries, metric: str) -> dict[str, float]:
    from hubscout.scores import METRICS

    sign = -1.0 if METRICS[metric].direction == "lower" else 1.0
    return {e.teacher_id: (sign * e.scores[metric] if np.isfinite(e.scores[metric]) else -np.inf) for e in entries}


def evaluate_scores(scores: np.ndarray, acc: np.ndarray) -> dict[str, float]:
    from scipy.stats import weightedtau

    s = np.where(np.isfinite(scores), scores, np.nanmin(np.where(np.isfinite(scores), scores, np.nan)) - 1.0
                 if np.isfinite(scores).any() else 0.0)
    tau = float(weightedtau(s, acc).statistic) if len(acc) > 1 and np.ptp(acc) > 0 and np.ptp(s) > 0 else float("nan")
    top = int(np.argmax(s))
    return {"tau_w": tau, "top1_hit": float(acc[top] >= acc.max() - 1e-12), "regret": float(acc.max() - acc[top])}


def random_baseline(acc: np.ndarray, n: int = 500, seed: int = 0) -> dict[str, float]:
    """Expected values of a uniformly random ranking (Monte Carlo over ``n`` permutations)."""
    rng = np.random.default_rng(seed)
    res = [evaluate_scores(rng.permutation(len(acc)).astype(float), acc) for _ in range(n)]
    return {k: float(np.nanmean([r[k] for r in res])) for k in res[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 tasks, a tiny distillation budget (< 5 min)")
    ap.add_argument("--repo", help="teacher repository (default: the full demo zoo if complete, else the quick zoo)")
    ap.add_argument("--max-teachers", type=int, default=None, help="use only the first N teachers")
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    limit_threads(1)

    from hubscout.extract import FileCache
    from hubscout.ot import DEFAULT_COST
    from hubscout.plots import plot_transport_plan
    from hubscout.rank import rank
    from hubscout.sources import TARGETS, demo_target
    from hubscout.teachers import Repository

    repo_dir = resolve_repo(args.repo, args.quick)
    repo = Repository(repo_dir)
    teachers = repo.list()
    if args.max_teachers:
        teachers = teachers[: args.max_teachers]
    elif args.quick:
        teachers = teachers[:5]
    tids = [t.id for t in teachers]
    tasks = QUICK_TASKS if args.quick else FULL_TASKS
    per_class = args.test_per_class or (100 if args.quick else 200)
    print(f"repo {repo_dir} ({len(teachers)} teachers), {len(tasks)} tasks", flush=True)

    name_out = "ranking_v1_quick" if args.quick else "ranking_v1"
    gt_all = _load_gt()
    metric_names = [f"ot[{c}]" for c in COSTS] + list(BASELINES) + ["random"]
    per_task: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name, shots in tasks:
        try:
            train = demo_target(name, shots, seed=args.seed)
        except ValueError as e:
            print(f"skip {name}-{shots}: {e}")
            continue
        test = demo_target(name, split="test", max_per_class=per_class, seed=args.seed)
        srcs = {s for s, _ in TARGETS[name].parts}
        cfg = budget(args.quick, hflip=not (srcs & {"mnist", "digits"}))
        print(f"task {name}-{shots}shot: {len(train)} train / {len(test)} test images", flush=True)

        # Ranking: one uncached pass (timed: this is what a user waits for), then the other costs from the cache.
        rankings = {}
        with tempfile.TemporaryDirectory() as tmp:
            cache = FileCache(tmp)
            t0 = time.perf_counter()
            r = rank(train, repo, metrics=["ot", *BASELINES], teacher_ids=tids, cache=cache, cost=DEFAULT_COST,
                     device="cpu")
            rank_s = time.perf_counter() - t0
            rankings[DEFAULT_COST] = r
            for c in COSTS:
                if c not in rankings:
                    rankings[c] = rank(train, repo, metrics=["ot"], teacher_ids=tids, cache=cache, cost=c,
                                       device="cpu")
        # The plan of the teacher OT puts first, drawn as the CLI and the web page draw it.
        best = r.entries[0]
        plot_transport_plan(best.plan_summary, RESULTS / f"{name_out}_plans" / f"{name}-{shots}shot.png",
                            title=f"{name}-{shots}shot: {best.teacher_id} (OT's first)")
        forward_s = sum(e.forward_s for e in r.entries)
        score_s = sum(e.score_s for e in r.entries)

        gt = ground_truth(train, test, repo, teachers, cfg, name, shots, args.seed, gt_all)
        acc = np.array([gt[t]["accuracy"] for t in tids])
        brute_s = sum(gt[t]["distill_s"] + gt[t]["eval_s"] for t in tids)

        res: dict[str, dict[str, float]] = {}
        raw: dict[str, dict[str, float]] = {}
        for c in COSTS:
            o = oriented(rankings[c].entries, "ot")
            raw[f"ot[{c}]"] = o
            res[f"ot[{c}]"] = evaluate_scores(np.array([o[t] for t in tids]), acc)
        for m in BASELINES:
            o = oriented(r.entries, m)
            raw[m] = o
            res[m] = evaluate_scores(np.array([o[t] for t in tids]), acc)
        res["random"] = random_baseline(acc, seed=args.seed)
        views = {}
        for rel, ids in relation_views(train.classes, teachers).items():
            sub = np.array([tids.index(t) for t in ids])
            vres = {m: evaluate_scores(np.array([raw[m][t] for t in ids]), acc[sub]) for m in raw}
            vres["random"] = random_baseline(acc[sub], seed=args.seed)
            views[rel] = {"teachers": ids, "best_teacher": ids[int(np.argmax(acc[sub]))], "metrics": vres}
        per_task.append({
            "task": f"{name}-{shots}shot", "target": name, "shots": shots, "relation": relation(train.classes, teachers),
            "n_train": len(train), "n_test": len(test), "accuracy": dict(zip(tids, acc.tolist())),
            "ce_only_accuracy": gt["__ce_only__"]["accuracy"],
            "seed_noise_std": float(np.std([gt[k]["accuracy"] for k in ("__ce_only__", "__ce_only_seed1__",
                                                                        "__ce_only_seed2__")], ddof=1)),
            "teacher_spread": float(np.ptp(acc)), "best_teacher": tids[int(np.argmax(acc))],
            "oriented_scores": raw, "metrics": res, "rank_s": rank_s, "forward_s": forward_s, "score_s": score_s,
            "brute_force_s": brute_s, "views": views,
        })
        print(f"  ranked in {rank_s:.1f}s vs brute force {brute_s:.1f}s; best {per_task[-1]['best_teacher']}; "
              + ", ".join(f"{m} {res[m]['tau_w']:.2f}" for m in metric_names), flush=True)

    mean = {m: {k: float(np.nanmean([t["metrics"][m][k] for t in per_task])) for k in ("tau_w", "top1_hit", "regret")}
            for m in metric_names}
    by_relation = {}
    for rel in ("inside", "overlapping", "outside"):
        vs = [t["views"][rel] for t in per_task if rel in t["views"]]
        if vs:
            by_relation[rel] = {"n": len(vs), "mean": {
                m: {k: float(np.nanmean([v["metrics"][m][k] for v in vs])) for k in ("tau_w", "top1_hit", "regret")}
                for m in metric_names}}
    rank_total = sum(t["rank_s"] for t in per_task)
    brute_total = sum(t["brute_force_s"] for t in per_task)
    mach = machine()
    cfg_full = budget(args.quick, True).to_dict()
    payload = {
        "benchmark": "ranking", "quick": args.quick, "machine": mach, "repo": str(repo_dir), "teachers": tids,
        "distill_budget": cfg_full, "test_per_class": per_class, "tasks": per_task, "mean": mean,
        "by_relation": by_relation,
        "timing": {"rank_total_s": rank_total, "brute_force_total_s": brute_total,
                   "speedup": brute_total / max(rank_total, 1e-9)},
        "wall_s": time.perf_counter() - t_start,
    }

    md = [f"# Ranking quality{' (--quick)' if args.quick else ''}\n", machine_md(mach),
          f"\nRepository `{repo_dir}` ({len(tids)} teachers: {', '.join(tids)}). {len(per_task)} tasks. "
          f"Ground truth: test accuracy (≤{per_class} test images a class) of a `{cfg_full['student_arch']}` "
          f"student distilled from each teacher alone, epochs={cfg_full['epochs']}, min_steps={cfg_full['min_steps']}, "
          f"teacher_views={cfg_full['teacher_views']}, seed {args.seed} (one seed: the ground truth itself is noisy).\n",
          "\n## Mean over tasks\n\n",
          md_table(["metric", "weighted τ", "top-1 hit", "regret (acc. points)"],
                   [[m, mean[m]["tau_w"], mean[m]["top1_hit"], 100 * mean[m]["regret"]] for m in metric_names]),
          f"\n`random` is the expectation over 500 random permutations.\n",
          "\n## By relation of the target to the repository\n\nEvery demo target has a teacher trained on its "
          "classes, so *overlapping* and *outside* are the same tasks ranked within a cut repository: without the "
          "teachers that know all the target's classes, and without any that knows one (`relation_views`). "
          "Weighted τ / top-1 hit / regret (points):\n\n",
          md_table(["metric"] + [f"{rel} ({v['n']} tasks)" for rel, v in by_relation.items()],
                   [[m] + [f"{v['mean'][m]['tau_w']:.2f} / {v['mean'][m]['top1_hit']:.2f} / "
                           f"{100 * v['mean'][m]['regret']:.1f}" for v in by_relation.values()]
                    for m in metric_names]),
          f"\nRanking (one uncached pass, all metrics) took {rank_total:.1f} s in all; the brute-force enumeration "
          f"(distil + evaluate every teacher) {brute_total:.1f} s: **{brute_total / max(rank_total, 1e-9):.1f}×** "
          f"slower.\n", "\n## Per task (weighted τ)\n\n*spread*: best minus worst student accuracy over teachers; *seed noise*: "
          "std of the CE-only student's accuracy over 3 seeds, the noise level of any single ground-truth value.\n\n",
          md_table(["task", "relation", "best teacher", "best acc", "spread over teachers", "CE-only acc",
                    "seed noise (std)"] + metric_names,
                   [[t["task"], t["relation"], t["best_teacher"], max(t["accuracy"].values()), t["teacher_spread"],
                     t["ce_only_accuracy"], t["seed_noise_std"]]
                    + [t["metrics"][m]["tau_w"] for m in metric_names] for t in per_task]),
          "\n## Per task: top-1 hit / regret\n\n",
          md_table(["task"] + metric_names,
                   [[t["task"]] + [f"{t['metrics'][m]['top1_hit']:.0f} / {100 * t['metrics'][m]['regret']:.1f}"
                                   if m != "random" else f"{t['metrics'][m]['top1_hit']:.2f} / "
                                   f"{100 * t['metrics'][m]['regret']:.1f}" for m in metric_names] for t in per_task]),
          "\n## Per task: accuracy of the student from each teacher\n\n",
          md_table(["task"] + tids, [[t["task"]] + [t["accuracy"][x] for x in tids] for t in per_task]),
          "\n## Timing per task\n\n",
          md_table(["task", "rank s", "forward s", "scoring s", "brute force s", "ratio"],
                   [[t["task"], t["rank_s"], t["forward_s"], t["score_s"], t["brute_force_s"],
                     t["brute_force_s"] / max(t["rank_s"], 1e-9)] for t in per_task])]
    name = name_out
    _plot(mean, metric_names, RESULTS / f"{name}.png")
    md.append(f"\n![mean weighted tau]({name}.png)\n")
    md.append("\n## The plan of OT's first teacher, per task\n\n" + "".join(
        f"![{t['task']}]({name}_plans/{t['task']}.png) " for t in per_task) + "\n")
    write_results(name, payload, "".join(md))
    print(f"wrote {RESULTS / name}.md/.json/.png in {payload['wall_s']:.0f}s", flush=True)
    return payload


def _plot(mean, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    vals = [mean[m]["tau_w"] for m in names]
    ax.bar(names, vals, color=["tab:blue" if m.startswith("ot[") else "tab:red" if m == "random" else "tab:gray"
                               for m in names])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("mean weighted Kendall τ")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
