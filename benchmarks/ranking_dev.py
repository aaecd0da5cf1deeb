"""Method selection for ranking v2 on the **dev half only** (PROTOCOL.md §8): every candidate score against both
ground truths on the dev tasks whose cells are done. Never reads a test-half cell.

    python -m benchmarks.ranking_dev [--partial]   # --partial: also tasks whose pool is not complete yet

Writes ``results/ranking_dev.{md,json}``: per candidate and ground truth the mean weighted τ over the dev tasks,
top-1 hit and regret, so that what was tried and what it measured stays on record (losses included).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from benchmarks import groundtruth as gtm
from benchmarks._common import limit_threads, machine, machine_md, md_table, write_results
from benchmarks.stats import bootstrap_ci, task_quality

GROUND_TRUTHS = ("transfer", "distillation")


def candidates() -> dict[str, Callable[..., float]]:
    """name -> fn(out, labels, n_classes, teacher) -> score (higher = better). The product's registered metrics
    and OT variants under trial; a variant's hyper-parameters are in its name."""
    from hubscout.ot import cost_matrix, ot_relatedness
    from hubscout.scores import METRICS, logme

    def ot_cost(cost):
        return lambda o, y, C, t: -ot_relatedness(o.probs, y, C, cost_matrix(
            cost, classifier_weight=o.classifier_weight, features=o.features, probs=o.probs, labels=y,
            n_classes=C)).score

    def metric(name):
        return lambda o, y, C, t: METRICS[name].fn(probs=o.probs, features=o.features, labels=y, n_classes=C,
                                                   classifier_weight=o.classifier_weight, teacher=t)

    c: dict[str, Callable[..., float]] = {
        "ot[joint]": ot_cost("joint"),
        "ot[proto-softmax]": ot_cost("proto-softmax"),
        "leep": metric("leep"), "nce": metric("nce"), "hscore": metric("hscore"),
        "logme": metric("logme"), "logme[thuml]": lambda o, y, C, t: logme(o.features, y, C, thuml_compat=True),
        "nleep": metric("nleep"), "sfda": metric("sfda"), "gbc": metric("gbc"), "transrate": metric("transrate"),
        "source-acc": metric("source-acc"), "params": metric("params"),
    }
    try:
        from hubscout.ot import _features as F  # noqa: N812  (candidates under trial)
    except ImportError:
        return c
    for name, fn in F.CANDIDATES.items():
        c[name] = (lambda fn: lambda o, y, C, t: fn(o.features, y, C, probs=o.probs,
                                                    classifier_weight=o.classifier_weight))(fn)
    return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partial", action="store_true", help="score teachers with all seeds done on incomplete pools")
    ap.add_argument("--only", default=None, help="comma list of candidates (default: all)")
    args = ap.parse_args(argv)
    limit_threads(1)
    from benchmarks import bench_zoo
    from benchmarks.ranking import task_ground_truth
    from benchmarks.tasks import load_manifest, pool_ids, task_data
    from hubscout.extract import FileCache, outputs_for
    from hubscout.teachers import Repository

    repo = Repository(bench_zoo.ZOO_DIR)
    cache = gtm.CellCache()
    outputs = FileCache(gtm.OUTPUTS)
    cands = candidates()
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only.split(",")}
    rows: dict[str, dict[str, list[dict[str, float]]]] = {m: {k: [] for k in GROUND_TRUTHS} for m in cands}
    per_task = []
    secs = {m: 0.0 for m in cands}
    for task in [t for t in load_manifest() if t["half"] == "dev"]:  # the dev half, never the test half
        pool = [t for t in pool_ids(task, bench_zoo.catalogue()) if t in repo]
        gt = task_ground_truth(cache, task, repo, pool, gtm.SEEDS)
        usable = {k: gt[k]["accuracy"] for k in GROUND_TRUTHS
                  if gt[k]["complete"] or (args.partial and len(gt[k]["accuracy"]) >= 4)}
        if not usable:
            continue
        train = task_data(task, "train")
        teachers = sorted(set().union(*[set(a) for a in usable.values()]))
        scores: dict[str, dict[str, float]] = {m: {} for m in cands}
        for tid in teachers:
            t = repo.get(tid)
            out, _ = outputs_for(t, train, outputs, device="cpu")
            for m, fn in cands.items():
                t0 = time.perf_counter()
                try:
                    scores[m][tid] = float(fn(out, train.labels, train.num_classes, t))
                except (ValueError, np.linalg.LinAlgError) as e:
                    print(f"  {m} failed on {tid}: {e}")
                    scores[m][tid] = float("nan")
                secs[m] += time.perf_counter() - t0
        entry = {"id": task["id"], "relation": task["relation"], "n": {k: len(a) for k, a in usable.items()},
                 "complete": {k: gt[k]["complete"] for k in usable}, "tau": {}}
        for k, acc in usable.items():
            ids = sorted(acc)
            a = np.array([acc[i] for i in ids])
            entry["spread"] = {**entry.get("spread", {}), k: gt[k]["spread"]}
            entry["noise"] = {**entry.get("noise", {}), k: gt[k]["seed_noise"]}
            for m in cands:
                q = task_quality(np.array([scores[m][i] for i in ids]), a)
                rows[m][k].append(q)
                entry["tau"].setdefault(k, {})[m] = q["tau_w"]
        per_task.append(entry)
        print(f"{task['id']}: " + " | ".join(
            f"{k} n={len(usable[k])} " + " ".join(f"{m}={entry['tau'][k][m]:.2f}" for m in list(cands)[:0])
            for k in usable), flush=True)
    summary = {}
    for m in cands:
        summary[m] = {}
        for k in GROUND_TRUTHS:
            qs = rows[m][k]
            if not qs:
                continue
            taus = [q["tau_w"] for q in qs]
            summary[m][k] = {"n_tasks": len(qs), "tau_w": float(np.nanmean(taus)), "tau_w_ci": bootstrap_ci(taus),
                             "top1_hit": float(np.mean([q["top1_hit"] for q in qs])),
                             "regret": float(np.mean([q["regret"] for q in qs]))}
        summary[m]["score_s"] = secs[m]
    result = {"benchmark": "ranking-v2-dev-selection", "half": "dev", "partial": args.partial,
              "machine": machine(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tasks": per_task, "summary": summary}
    head = ["candidate"] + [f"{k} {s}" for k in GROUND_TRUTHS for s in ("τ_w [95% CI]", "top-1", "regret")]
    body = []
    for m in sorted(summary, key=lambda m: -np.nanmean([summary[m].get(k, {}).get("tau_w", np.nan)
                                                       for k in GROUND_TRUTHS])):
        r = [m]
        for k in GROUND_TRUTHS:
            s = summary[m].get(k)
            r += ([f"{s['tau_w']:.2f} [{s['tau_w_ci'][0]:.2f}, {s['tau_w_ci'][1]:.2f}] (n={s['n_tasks']})",
                   f"{s['top1_hit']:.2f}", f"{s['regret']:.1f}"] if s else ["-"] * 3)
        body.append(r)
    md = ["# Ranking v2, method selection on the dev half", "", machine_md(result["machine"]), "",
          "Dev tasks only (PROTOCOL.md §8); " + ("pools may be incomplete (`--partial`)." if args.partial
                                                 else "complete pools only."), "", md_table(head, body)]
    print("\n".join(md[-1:]))
    write_results("ranking_dev", result, "\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    main()
