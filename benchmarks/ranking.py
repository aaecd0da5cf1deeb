"""Ranking quality, benchmark v2 (issue 12): do the metrics order the teachers as the two ground truths do?

Protocol: ``benchmarks/PROTOCOL.md``; tasks: ``benchmarks/tasks.json``; ground truths: ``benchmarks.groundtruth``
(computed cell by cell, cached, resumable). This script reads the finished cells, scores every teacher of each
task's pool with every metric on the task's train split, and writes ``results/ranking.{md,json}``: per half
(dev / test / all), ground truth and metric the mean weighted τ, top-1 hit and regret with 95 % bootstrap
intervals over tasks, the paired difference against the product's default; the same per relation; the cost of
ranking against the enumeration behind each ground truth; and how much of the ground truth is done.

    python -m benchmarks.ranking            # report from the cached cells (computes no ground truth)
    python -m benchmarks.ranking --quick    # smoke run: 1 dev task, 4 small teachers, 1 seed, tiny B budget
    python -m benchmarks.groundtruth        # compute the missing ground-truth cells (long; resumable)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import groundtruth as gtm
from benchmarks._common import RESULTS, limit_threads, machine, machine_md, md_table, write_results
from benchmarks.stats import random_quality, summarise, task_quality

OT_COSTS = ("joint", "proto-softmax", "proto", "proto-centred", "proto-softmax-centred")
BASELINES = ("leep", "nce", "hscore", "logme", "logme[thuml]", "nleep", "sfda", "sfda[pca32]", "ncti", "gbc",
             "transrate", "params", "source-acc")
GROUND_TRUTHS = ("transfer", "distillation")
HALVES = ("dev", "test", "all")
FORWARD_TIMES = gtm.CACHE / "forward_s.json"
QUICK_TASKS = ("fashion-footwear-5shot",)
QUICK_TEACHERS = ("fashion-footwear", "fashion-clothes", "fashion-all", "mnist-digits")  # demo-zoo teachers


def default_metric() -> str:
    """The product's default metric under its report name (``ot`` is reported with its cost)."""
    from hubscout.ot import DEFAULT_COST
    from hubscout.scores import DEFAULT_METRIC

    return f"ot[{DEFAULT_COST}]" if DEFAULT_METRIC == "ot" else DEFAULT_METRIC


def metric_names() -> list[str]:
    return [f"ot[{c}]" for c in OT_COSTS] + list(BASELINES) + ["random"]


# -------------------------------------------------------------------------------------------------- scores

def _forward_times() -> dict[str, float]:
    return json.loads(FORWARD_TIMES.read_text()) if FORWARD_TIMES.is_file() else {}


def timed_outputs(teacher, train, outputs_cache):
    """The teacher's outputs on ``train`` and the CPU seconds of one uncached forward pass over it (measured once,
    kept in ``benchmarks/.cache/forward_s.json``; ``--warm`` measures them ahead of a report)."""
    from hubscout.extract import extract

    key = f"{teacher.weights_sha256}:{train.sha256}"
    times = _forward_times()
    out = outputs_cache.get(teacher.weights_sha256, train.sha256)
    if out is None or key not in times:
        t0 = time.process_time()
        out = extract(teacher, train, device="cpu")
        times[key] = time.process_time() - t0
        outputs_cache.put(teacher.weights_sha256, train.sha256, out)
        FORWARD_TIMES.parent.mkdir(parents=True, exist_ok=True)
        FORWARD_TIMES.write_text(json.dumps({**_forward_times(), key: times[key]}))
    return out, times[key]


def score_pool(train, repo, pool: list[str], outputs_cache) -> tuple[dict, dict, dict]:
    """Every metric for every pool teacher, oriented so that higher is better (OT costs negated).
    Returns scores[metric][teacher], score seconds[metric][teacher], forward seconds[teacher] (an uncached pass
    over the train split, measured once and kept in ``benchmarks/.cache/forward_s.json``). Seconds are the
    process's CPU seconds on one torch thread, as the ground truth's ``cpu_s``: what an idle core would take,
    whatever else the machine runs while the report is made."""
    from hubscout.ot import cost_matrix, ot_relatedness
    from hubscout.scores import METRICS, _pca, logme, ncti_combine, ncti_terms, sfda

    scores: dict[str, dict[str, float]] = {m: {} for m in metric_names() if m != "random"}
    secs: dict[str, dict[str, float]] = {m: {} for m in scores}
    fwd: dict[str, float] = {}
    terms = {}
    for tid in pool:
        t = repo.get(tid)
        out, fwd[tid] = timed_outputs(t, train, outputs_cache)
        y, C = train.labels, train.num_classes
        kw = dict(probs=out.probs, features=out.features, classifier_weight=out.classifier_weight, labels=y,
                  n_classes=C, teacher=t)
        for m in scores:
            t0 = time.process_time()
            try:
                if m.startswith("ot["):
                    M = cost_matrix(m[3:-1], classifier_weight=out.classifier_weight, features=out.features,
                                    probs=out.probs, labels=y, n_classes=C)
                    v = -ot_relatedness(out.probs, y, C, M).score
                elif m == "logme[thuml]":
                    v = logme(out.features, y, C, thuml_compat=True)
                elif m == "sfda[pca32]":  # SFDA saturates at 1.0 on few samples; the reference's tracker: PCA to 32
                    v = sfda(_pca(out.features, 32), y, C)
                elif m == "ncti":
                    terms[tid] = ncti_terms(out.features, y, C)
                    v = float("nan")  # combined over the pool below
                else:
                    v = METRICS[m].fn(**kw)
            except (ValueError, np.linalg.LinAlgError) as e:  # a metric that fails on a teacher ranks it last
                print(f"  {m} failed on {tid}: {e}", flush=True)
                v = float("nan")
            scores[m][tid] = float(v)
            secs[m][tid] = time.process_time() - t0
    combined = ncti_combine([terms[t] for t in pool])
    scores["ncti"] = dict(zip(pool, combined))
    return scores, secs, fwd


# -------------------------------------------------------------------------------------------- ground truth

def task_ground_truth(cache, task, repo, pool, seeds, distill=None) -> dict[str, Any]:
    """Per ground truth: seed-mean accuracy and seed std per teacher (teachers with all seeds), completeness,
    spread over teachers, seed noise, best teacher and the enumeration's seconds; plus the CE-only reference."""
    out: dict[str, Any] = {}
    for kind in GROUND_TRUTHS:
        acc, std, secs, done = {}, {}, 0.0, 0
        for tid in pool:
            cells = [gtm.cell(cache, kind, task, repo, tid, s, None, compute=False, distill=distill) for s in seeds]
            got = [c for c in cells if c is not None]
            done += len(got)
            if len(got) == len(seeds):
                acc[tid] = float(np.mean([c["accuracy"] for c in got]))
                std[tid] = float(np.std([c["accuracy"] for c in got], ddof=1)) if len(got) > 1 else float("nan")
                # CPU seconds (one thread), like the ranking's side of the ratio; the oldest cells have only wall
                secs += sum(c.get("cpu_s", c["seconds"]) for c in got)
        complete = len(acc) == len(pool)
        out[kind] = {
            "accuracy": acc, "seed_std": std, "complete": complete, "cells_done": done,
            "cells_total": len(pool) * len(seeds),
            "spread": float(max(acc.values()) - min(acc.values())) if acc else float("nan"),
            "seed_noise": float(np.nanmean(list(std.values()))) if std else float("nan"),
            "best_teacher": max(acc, key=acc.get) if acc else None,
            "enumeration_s": secs if complete else None,
            "enumeration_one_seed_s": secs / len(seeds) if complete else None,
        }
    ce = [gtm.cell(cache, "ce", task, repo, None, s, None, compute=False, distill=distill) for s in seeds]
    ce = [c["accuracy"] for c in ce if c is not None]
    out["ce_only"] = {"mean": float(np.mean(ce)) if ce else None, "n_seeds": len(ce)}
    return out


def _progress(cache, repo, tasks, pools, seeds) -> dict[str, Any]:
    """Cells done / total per kind and half, cell seconds per kind and teacher size, and the projected time of
    the cells still missing (median seconds of the finished cells of the same kind and size class)."""
    done_s: dict[tuple[str, str], list[float]] = {}
    cpu_s: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, dict[str, list[int]]] = {}
    missing: list[tuple[str, str]] = []
    for task, pool in zip(tasks, pools):
        for kind in (*GROUND_TRUTHS, "ce"):
            for tid in ([None] if kind == "ce" else pool):
                # Teachers not built yet count as missing (their weights, hence their keys, do not exist yet).
                size = "none" if tid is None else ("224px" if tid.startswith("imagenet-") else "small")
                built = tid is None or tid in repo
                for s in seeds:
                    c = gtm.cell(cache, kind, task, repo, tid, s, None, compute=False) if built else None
                    n = counts.setdefault(kind, {}).setdefault(task["half"], [0, 0])
                    n[1] += 1
                    if c is None:
                        missing.append((kind, size))
                    else:
                        n[0] += 1
                        done_s.setdefault((kind, size), []).append(c["seconds"])
                        if "cpu_s" in c:
                            cpu_s.setdefault((kind, size), []).append(c["cpu_s"])
    per_kind = {f"{k}/{sz}": {"n": len(v), "median_s": float(np.median(v)), "mean_s": float(np.mean(v)),
                              "median_cpu_s": float(np.median(cpu_s[(k, sz)])) if cpu_s.get((k, sz)) else None}
                for (k, sz), v in sorted(done_s.items())}
    projected = projected_cpu = 0.0
    unknown = unknown_cpu = 0
    for k, sz in missing:
        v, c = done_s.get((k, sz)), cpu_s.get((k, sz))
        if v:
            projected += float(np.median(v))
        else:
            unknown += 1
        if c:
            projected_cpu += float(np.median(c))
        else:
            unknown_cpu += 1
    return {"cells": {k: {h: {"done": d, "total": t} for h, (d, t) in v.items()} for k, v in counts.items()},
            "cell_seconds": per_kind, "missing": len(missing), "projected_missing_s": projected,
            "projected_missing_cpu_s": projected_cpu, "missing_without_cpu_timing": unknown_cpu,
            "missing_without_timing": unknown}


# ------------------------------------------------------------------------------------------------ the report

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 dev task, 4 small teachers, 1 seed (computes its cells)")
    ap.add_argument("--all-scores", action="store_true", help="score tasks whose ground truth is not complete too")
    ap.add_argument("--warm", action="store_true", help="only measure the teachers' forward passes over every "
                    "task's train split (the cost section's timings; no score, no ground truth is read), then stop")
    args = ap.parse_args(argv)
    limit_threads(1)

    from benchmarks import bench_zoo
    from benchmarks.tasks import load_manifest, pool_ids, task_data
    from hubscout.extract import FileCache
    from hubscout.teachers import Repository

    t_start = time.perf_counter()
    repo = Repository(bench_zoo.ZOO_DIR)
    if args.quick and any(t not in repo for t in QUICK_TEACHERS):
        raise SystemExit(f"build the benchmark repository first: python -m benchmarks.bench_zoo ({repo.root})")
    catalogue = bench_zoo.catalogue()
    outputs_cache = FileCache(gtm.OUTPUTS)
    cache = gtm.CellCache()
    tasks = load_manifest()
    seeds = (0,) if args.quick else gtm.SEEDS
    distill = gtm.QUICK_DISTILL if args.quick else None
    if args.quick:
        tasks = [t for t in tasks if t["id"] in QUICK_TASKS]
    pools = [[t for t in pool_ids(task, catalogue) if not args.quick or t in QUICK_TEACHERS] for task in tasks]
    if args.quick:  # the smoke run computes its own (tiny) cells
        for task, pool in zip(tasks, pools):
            data = lambda task=task: (task_data(task, "train"), task_data(task, "test"))  # noqa: E731
            for kind in ("transfer", "distillation"):
                for tid in pool:
                    gtm.cell(cache, kind, task, repo, tid, 0, data, outputs_cache=outputs_cache, distill=distill)
    if args.warm:
        for task, pool in zip(tasks, pools):
            train = task_data(task, "train")
            for tid in (t for t in pool if t in repo):
                timed_outputs(repo.get(tid), train, outputs_cache)
            print(f"warm: {task['id']}", flush=True)
        return {}
    names = metric_names()
    dflt = default_metric()
    per_task = []
    for task, pool in zip(tasks, pools):
        built = [t for t in pool if t in repo]
        gt = task_ground_truth(cache, task, repo, built, seeds, distill)
        if len(built) < len(pool):  # a pool teacher not built yet: the task cannot be complete
            for k in GROUND_TRUTHS:
                gt[k]["complete"] = False
                gt[k]["cells_total"] = len(pool) * len(seeds)
        entry: dict[str, Any] = {"id": task["id"], "family": task["family"], "half": task["half"],
                                 "relation": task["relation"], "shots": task["shots"],
                                 "classes": task["classes"], "pool": pool, "ground_truth": gt}
        if len(built) < len(pool) or not (args.all_scores or any(gt[k]["complete"] for k in GROUND_TRUTHS)):
            per_task.append(entry)
            continue
        train = task_data(task, "train")
        scores, secs, fwd = score_pool(train, repo, pool, outputs_cache)
        entry.update({"accuracy": {k: gt[k]["accuracy"] for k in GROUND_TRUTHS}, "scores": scores,
                      "forward_s": fwd, "score_s": {m: float(sum(v.values())) for m, v in secs.items()}})
        quality: dict[str, dict[str, Any]] = {}
        for k in GROUND_TRUTHS:
            if not gt[k]["complete"]:
                continue
            acc = np.array([gt[k]["accuracy"][t] for t in pool])
            q = {m: task_quality(np.array([scores[m][t] for t in pool]), acc) for m in names if m != "random"}
            q["random"] = random_quality(acc)
            quality[k] = q
        entry["quality"] = quality
        per_task.append(entry)
        print(f"{task['id']}: " + "; ".join(f"{k} τ {dflt} {quality[k][dflt]['tau_w']:.2f}" for k in quality),
              flush=True)

    summary: dict[str, Any] = {}
    by_relation: dict[str, Any] = {}
    for half in HALVES:
        summary[half] = {}
        by_relation[half] = {}
        for k in GROUND_TRUTHS:
            ts = [t for t in per_task if (half == "all" or t["half"] == half) and k in t.get("quality", {})]
            summary[half][k] = ({m: summarise([t["quality"][k][m] for t in ts], [t["quality"][k][dflt] for t in ts])
                                 for m in names} if ts else {})
            for rel in ("inside", "overlapping", "outside", "cross-domain"):
                rs = [t for t in ts if t["relation"] == rel]
                by_relation[half].setdefault(rel, {})[k] = (
                    {m: summarise([t["quality"][k][m] for t in rs], [t["quality"][k][dflt] for t in rs])
                     for m in names} if rs else {})

    scored = [t for t in per_task if "scores" in t]
    rank_s = {m: float(sum(sum(t["forward_s"].values()) + t["score_s"][m] for t in scored))
              for m in names if m != "random"}
    enum = {k: {"all_seeds_s": float(sum(t["ground_truth"][k]["enumeration_s"] for t in scored
                                         if t["ground_truth"][k]["complete"])),
                "one_seed_s": float(sum(t["ground_truth"][k]["enumeration_one_seed_s"] for t in scored
                                        if t["ground_truth"][k]["complete"])),
                "tasks": sum(1 for t in scored if t["ground_truth"][k]["complete"])} for k in GROUND_TRUTHS}
    # Ranking time over the same tasks as each enumeration, so that the ratio compares like with like.
    for k in GROUND_TRUTHS:
        ts = [t for t in scored if t["ground_truth"][k]["complete"]]
        r = float(sum(sum(t["forward_s"].values()) + t["score_s"][dflt] for t in ts))
        enum[k]["rank_default_s"] = r
        enum[k]["ratio_one_seed"] = enum[k]["one_seed_s"] / r if r > 0 else None
    progress = _progress(cache, repo, tasks, pools, seeds)
    progress["teachers_not_built"] = sorted({t for p in pools for t in p if t not in repo})
    mach = machine()
    payload = {
        "benchmark": "ranking-v2", "quick": args.quick, "partial": any(
            not (t["ground_truth"] and t["ground_truth"][k]["complete"]) for t in per_task for k in GROUND_TRUTHS),
        "default_metric": dflt, "ground_truths": list(GROUND_TRUTHS), "metrics": names, "machine": mach,
        "date": mach["date_utc"], "protocol": "benchmarks/PROTOCOL.md", "manifest": "benchmarks/tasks.json",
        "seeds": list(seeds), "transfer_budget": gtm.TRANSFER.to_dict(),
        "distillation_budget": gtm.distill_budget(0, distill), "tasks": per_task, "summary": summary,
        "summary_by_relation": by_relation,
        "cost": {"rank_s": rank_s, "enumeration": enum}, "progress": progress,
        "wall_s": time.perf_counter() - t_start,
    }
    name = "ranking_quick" if args.quick else "ranking"
    write_results(name, payload, _markdown(payload))
    if not args.quick:
        n = cache.consolidate()
        print(f"consolidated {n} cells into {gtm.CONSOLIDATED}", flush=True)
    print(f"wrote {RESULTS / name}.md/.json in {payload['wall_s']:.0f}s", flush=True)
    return payload


def _ci(v: dict[str, Any], k: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    lo, hi = v[f"{k}_ci"]
    if not np.isfinite(v[k]):
        return "–"
    return f"{fmt.format(scale * v[k])} [{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"


def _markdown(p: dict[str, Any]) -> str:
    names, dflt = p["metrics"], p["default_metric"]
    out = [f"# Ranking quality, benchmark v2{' (--quick)' if p['quick'] else ''}\n\n", machine_md(p["machine"]),
           f"\nProtocol `benchmarks/PROTOCOL.md`, tasks `benchmarks/tasks.json`. Default metric (what the product "
           f"ranks by): **{dflt}**. Seeds {p['seeds']}.\n"]
    if p["partial"]:
        out.append("\n**PARTIAL: the ground truth is not complete.** Only tasks whose ground truth has every pool "
                   "teacher at every seed enter a table; how many did is given with each table. Numbers over a "
                   "few tasks are anecdotal.\n")
    for half in HALVES:
        for k in GROUND_TRUTHS:
            s = p["summary"][half][k]
            if not s:
                out.append(f"\n## {half} / {k}: no complete task yet\n")
                continue
            n = s[dflt]["n_tasks"]
            out.append(f"\n## {half} / ground truth {k} ({n} task(s))\n\nMeans over tasks with 95 % bootstrap "
                       f"intervals; Δτ = paired difference of weighted τ against {dflt} (interval, wins/ties/losses).\n\n")
            rows = []
            for m in names:
                v = s[m]
                pv = v["paired_vs_default"]
                rows.append([m, _ci(v, "tau_w"), _ci(v, "top1_hit"), _ci(v, "regret", fmt="{:.1f}"),
                             "–" if m == dflt else f"{pv['mean']:+.2f} [{pv['ci'][0]:+.2f}, {pv['ci'][1]:+.2f}]",
                             "–" if m == dflt else f"{pv['wins']}/{pv['ties']}/{pv['losses']}"])
            out.append(md_table(["metric", "weighted τ", "top-1 hit", "regret (points)", "Δτ vs default",
                                 "W/T/L"], rows))
    out.append("\n## By relation (all halves): mean weighted τ (tasks)\n\n")
    for k in GROUND_TRUTHS:
        rels = {r: v[k] for r, v in p["summary_by_relation"]["all"].items() if v.get(k)}
        if not rels:
            continue
        out.append(f"\n### {k}\n\n")
        out.append(md_table(["metric"] + [f"{r} ({v[dflt]['n_tasks']})" for r, v in rels.items()],
                            [[m] + [f"{v[m]['tau_w']:.2f}" for v in rels.values()] for m in names]))
    out.append("\n## Per task\n\n*spread*: best − worst seed-mean accuracy over the pool; *noise*: mean over "
               "teachers of the std over seeds. Where the spread is not well above the noise the ground truth "
               "cannot decide the task.\n\n")
    rows = []
    for t in p["tasks"]:
        g = t["ground_truth"] or {}
        row = [t["id"], t["half"], t["relation"], len(t["pool"])]
        for k in GROUND_TRUTHS:
            x = g.get(k)
            row += ([f"{x['cells_done']}/{x['cells_total']}", x["best_teacher"] or "–",
                     f"{x['spread']:.3f} / {x['seed_noise']:.3f}" if x["complete"] else "–"] if x else ["–"] * 3)
        row.append(f"{g['ce_only']['mean']:.3f}" if g and g["ce_only"]["mean"] is not None else "–")
        rows.append(row)
    out.append(md_table(["task", "half", "relation", "teachers", "A cells", "A best", "A spread / noise",
                         "B cells", "B best", "B spread / noise", "CE-only"], rows))
    c = p["cost"]
    out.append("\n## Cost\n\nCPU seconds on one torch thread, both sides. Ranking = Σ over the pool of one uncached "
               "forward pass over the train split + the metric's scoring, over the scored tasks; enumeration = "
               "Σ of the ground truth's cells (`cpu_s`):\n\n")
    out.append(md_table(["metric", "ranking s"], [[m, v] for m, v in c["rank_s"].items()]))
    out.append("\n" + md_table(["ground truth", "complete tasks", "enumeration s (one seed)", "all seeds s",
                                f"ranking s ({dflt})", "enumeration / ranking"],
                               [[k, v["tasks"], v["one_seed_s"], v["all_seeds_s"], v["rank_default_s"],
                                 v["ratio_one_seed"] if v["ratio_one_seed"] is not None else "–"]
                                for k, v in c["enumeration"].items()]))
    pr = p["progress"]
    if "cells" in pr:
        out.append("\n## Ground-truth progress\n\n")
        out.append(md_table(["kind", "half", "done", "total"], [[k, h, v["done"], v["total"]]
                                                                 for k, hv in pr["cells"].items()
                                                                 for h, v in hv.items()]))
        out.append("\nSeconds per finished cell (wall, one torch thread, on the shared machine):\n\n")
        out.append(md_table(["kind / teacher size", "cells", "median wall s", "mean wall s", "median CPU s"],
                            [[k, v["n"], v["median_s"], v["mean_s"],
                              v["median_cpu_s"] if v["median_cpu_s"] is not None else "–"]
                             for k, v in pr["cell_seconds"].items()]))
        if pr.get("teachers_not_built"):
            out.append(f"\nTeachers not built yet (their cells all count as missing): "
                       f"{', '.join(pr['teachers_not_built'])}.\n")
        out.append(f"\n{pr['missing']} cells missing; at the medians above they need about "
                   f"{pr['projected_missing_s'] / 3600:.1f} h of wall time at this machine's load, "
                   f"{pr['projected_missing_cpu_s'] / 3600:.1f} h of CPU time (one process per core on an idle "
                   f"machine: half that on 2 cores); {pr['missing_without_timing']} missing cells are of a kind "
                   f"without a wall timing yet and {pr['missing_without_cpu_timing']} without a CPU timing, not "
                   f"counted in these sums.\n")
    return "".join(out)


if __name__ == "__main__":
    main()
