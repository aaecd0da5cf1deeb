"""Shortlisting by specification (issue 7): 1,000 teachers scored without running any of them.

What is real and what is simulated:

* **Simulated market (1,000 specifications).** Each is the specification (class prototypes in the shared
  reference embedding, ``hubscout.spec.class_prototypes``) of a *hypothetical* teacher trained on a random class
  subset of one or two demo sources: its prototypes are class means of a bootstrap resample of a pool of embedded
  source images, with Gaussian noise added to the embeddings (sample noise of a teacher's own training sample).
  No model stands behind them, so they have no exact OT; they are the haystack the shortlist must search.
* **Real teachers (exact OT computed).** The repository's teachers with their stored (or freshly computed)
  specifications, plus *head-pruned* variants of its trained teachers: the same network with its classifier
  restricted to a subset of its classes (a real model whose forward and exact OT are computed), whose
  specification is the matching rows of its parent's (class means of its training sample, as
  ``specification_for`` would compute). They are not retrained on those subsets.

Reported: time of the shortlist step over 1,000 (+ real) specifications; recall of the exact-OT top-1 / top-3
(among the real teachers) inside the shortlist (top_k=10), over several targets; time of shortlist + exact OT on
the shortlist vs exhaustive exact OT, the latter estimated from the measured per-teacher forward + OT time × 1000.

    python -m benchmarks.shortlist [--quick] [--repo DIR]
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, limit_threads, machine, machine_md, md_table, resolve_repo, write_results

QUICK_TARGETS = ["footwear", "fashion-tops", "animals-farm", "pets-and-bags"]
FULL_TARGETS = ["footwear", "fashion-tops", "fashion-all", "animals-farm", "animals-wild", "animals-all",
                "digits-mnist", "mnist-odd", "handwritten", "pets-and-bags"]


def source_pool(embedder, per_class: int, seed: int):
    """Reference embeddings of ``per_class`` training images of every class of every demo source."""
    from hubscout.sources import SOURCES, load_source, sample_per_class

    pool = {}
    for name in SOURCES:
        ds = sample_per_class(load_source(name, "train"), per_class, seed=seed)
        imgs = ds.images if ds.images.shape[-1] == 1 else ds.images.mean(-1, keepdims=True).astype(np.uint8)
        emb = embedder.embed(imgs)
        for c, cls in enumerate(ds.classes):
            pool[(name, cls)] = emb[ds.labels == c]
    return pool


def simulated_specs(pool, n: int, seed: int, noise: float):
    from hubscout.spec import Specification, class_prototypes

    rng = np.random.default_rng(seed)
    sources = sorted({s for s, _ in pool})
    by_src = {s: [c for (ss, c) in pool if ss == s] for s in sources}
    specs = []
    for i in range(n):
        srcs = list(rng.choice(sources, size=1 if rng.random() < 0.75 else 2, replace=False))
        classes = []
        for s in srcs:
            k = int(rng.integers(2, len(by_src[s]) + 1))
            classes += [(s, c) for c in rng.choice(by_src[s], size=k, replace=False)]
        embs, labels = [], []
        for j, key in enumerate(classes):
            e = pool[key]
            m = int(rng.integers(max(2, len(e) // 4), len(e) + 1))
            e = e[rng.integers(0, len(e), m)] + rng.normal(0, noise, (m, e.shape[1])).astype(np.float32)
            embs.append(e)
            labels.append(np.full(m, j))
        emb, lab = np.concatenate(embs), np.concatenate(labels)
        protos, mass = class_prototypes(emb, np.eye(len(classes), dtype=np.float32)[lab])
        specs.append(Specification(f"sim-{i:04d}", "simulated", [c for _, c in classes], protos, mass,
                                   n_samples=len(emb), source="simulated"))
    return specs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="shortlist benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repo")
    ap.add_argument("--n-specs", type=int, default=1000)
    ap.add_argument("--n-real", type=int, default=None, help="real teachers incl. head-pruned variants (30-50)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--noise", type=float, default=0.02, help="std of the Gaussian noise on embeddings")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    limit_threads(1)

    from hubscout import ot as hot
    from hubscout.extract import extract
    from hubscout.sources import demo_target
    from hubscout.spec import (ReferenceEmbedder, Specification, embed_target, load_specification, shortlist, spec_scores,
                               specification_for)
    from hubscout.teachers import Repository

    t_start = time.perf_counter()
    repo_dir = resolve_repo(args.repo, args.quick)
    repo = Repository(repo_dir)
    n_real_target = args.n_real or (30 if args.quick else 50)
    targets = QUICK_TARGETS if args.quick else FULL_TARGETS
    embedder = ReferenceEmbedder(device="cpu")

    t0 = time.perf_counter()
    pool = source_pool(embedder, per_class=12 if args.quick else 40, seed=args.seed)
    pool_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sims = simulated_specs(pool, args.n_specs, args.seed, args.noise)
    sim_build_s = time.perf_counter() - t0
    print(f"pool {sum(len(v) for v in pool.values())} images embedded in {pool_s:.1f}s; "
          f"{len(sims)} simulated specs in {sim_build_s:.1f}s", flush=True)

    # Real teachers: the repository's, and head-pruned variants of the trained ones.
    rng = np.random.default_rng(args.seed + 1)
    real: list[dict[str, Any]] = []
    for t in repo.list():
        s = load_specification(repo, t.id) or specification_for(t, embedder)
        real.append({"id": t.id, "parent": t, "rows": np.arange(t.num_classes), "spec": s})
    trained = [r for r in real if r["parent"].num_classes <= 20]
    while len(real) < n_real_target and trained:
        par = trained[int(rng.integers(len(trained)))]
        K = par["parent"].num_classes
        rows = np.sort(rng.choice(K, size=int(rng.integers(2, K)) if K > 2 else 2, replace=False))
        vid = f"{par['id']}~{'-'.join(map(str, rows))}"
        if any(r["id"] == vid for r in real):
            continue
        ps = par["spec"]
        mass = ps.class_mass[rows] / ps.class_mass[rows].sum()
        spec = Specification(vid, "pruned", [ps.labels[i] for i in rows], ps.prototypes[rows], mass,
                             ps.reference, ps.n_samples, "pruned-parent-rows")
        real.append({"id": vid, "parent": par["parent"], "rows": rows, "spec": spec})
    print(f"{len(real)} real teachers ({len(repo.list())} in the repository + head-pruned variants)", flush=True)

    per_target = []
    per_teacher_cost: dict[str, list[float]] = {}
    for name in targets:
        ds = demo_target(name, args.shots, seed=args.seed)
        te = embed_target(ds, embedder)
        # Exact OT for every real teacher: one forward per parent, OT per (pruned) head.
        outs, fwd_s = {}, {}
        for r in real:
            p = r["parent"]
            if p.id not in outs:
                t0 = time.perf_counter()
                outs[p.id] = extract(p, ds, device="cpu")
                fwd_s[p.id] = time.perf_counter() - t0
        exact = {}
        for r in real:
            o = outs[r["parent"].id]
            t0 = time.perf_counter()
            logits = o.logits[:, r["rows"]].astype(np.float64)
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs = z / z.sum(1, keepdims=True)
            M = hot.cost_matrix("proto-softmax", classifier_weight=o.classifier_weight[r["rows"]],
                                features=o.features, probs=probs, labels=ds.labels, n_classes=ds.num_classes)
            exact[r["id"]] = float(hot.ot_relatedness(probs, ds.labels, ds.num_classes, M).score)
            ot_s = time.perf_counter() - t0
            per_teacher_cost.setdefault(r["parent"].id, []).append(fwd_s[r["parent"].id] + ot_s)
        exact_order = sorted(exact, key=exact.get)

        all_specs = sims + [r["spec"] for r in real]
        sl = shortlist(all_specs, te, k=args.top_k)
        sl_s = sl.elapsed_s - te.embed_s
        sl_real = shortlist([r["spec"] for r in real], te, k=args.top_k)
        kept, kept_real = set(sl.teacher_ids), set(sl_real.teacher_ids)
        # Where the exact-OT best real teacher lands in the specification order (1 = first).
        sc = spec_scores(all_specs, te)
        pos_all = int(np.sum(sc < sc[len(sims) + [r["id"] for r in real].index(exact_order[0])])) + 1
        sc_real = sc[len(sims):]
        pos_real = int(np.sum(sc_real < sc_real[[r["id"] for r in real].index(exact_order[0])])) + 1
        n_sim_better = int(np.sum(sc[:len(sims)] < sc_real.min()))
        row = {
            "target": name, "n_train": len(ds), "embed_target_s": te.embed_s, "shortlist_s": sl_s,
            "n_specs": len(all_specs), "exact_top3": exact_order[:3],
            "exact_scores_top3": [exact[t] for t in exact_order[:3]],
            "shortlist_mixed": sl.teacher_ids, "shortlist_real_only": sl_real.teacher_ids,
            "real_in_mixed_shortlist": sum(t in kept for t in exact),
            "exact_top1_spec_rank_mixed": pos_all, "exact_top1_spec_rank_real": pos_real,
            "simulated_ahead_of_best_real": n_sim_better,
            "top1_in_mixed": float(exact_order[0] in kept),
            "top3_recall_mixed": float(np.mean([t in kept for t in exact_order[:3]])),
            "top1_in_real_only": float(exact_order[0] in kept_real),
            "top3_recall_real_only": float(np.mean([t in kept_real for t in exact_order[:3]])),
        }
        per_target.append(row)
        print(f"{name}: shortlist {sl_s * 1000:.0f} ms over {len(all_specs)} specs; exact top-1 "
              f"{exact_order[0]} in mixed/real-only shortlist: {row['top1_in_mixed']:.0f}/{row['top1_in_real_only']:.0f}; "
              f"{row['real_in_mixed_shortlist']} real teachers in the mixed shortlist", flush=True)

    # Timing model: per-teacher exact cost = one forward + OT, measured on the repository's teachers.
    per_parent = {k: float(np.median(v)) for k, v in per_teacher_cost.items()}
    small = [v for k, v in per_parent.items() if repo.get(k).num_classes <= 20]
    per_teacher_s = float(np.mean(small)) if small else float(np.mean(list(per_parent.values())))
    per_teacher_all = float(np.mean(list(per_parent.values())))
    sl_mean = float(np.mean([r["shortlist_s"] for r in per_target]))
    sl_max = float(np.max([r["shortlist_s"] for r in per_target]))
    embed_mean = float(np.mean([r["embed_target_s"] for r in per_target]))
    exhaustive = per_teacher_s * args.n_specs
    two_stage = embed_mean + sl_mean + args.top_k * per_teacher_s
    mean = {k: float(np.mean([r[k] for r in per_target]))
            for k in ("top1_in_mixed", "top3_recall_mixed", "top1_in_real_only", "top3_recall_real_only")}
    mach = machine()
    payload = {
        "benchmark": "shortlist", "quick": args.quick, "machine": mach, "repo": str(repo_dir),
        "n_simulated": len(sims), "n_real": len(real), "real_ids": [r["id"] for r in real], "top_k": args.top_k,
        "shots": args.shots, "noise": args.noise, "pool_embed_s": pool_s, "simulated_build_s": sim_build_s,
        "targets": per_target, "mean": mean,
        "timing": {"shortlist_mean_s": sl_mean, "shortlist_max_s": sl_max, "embed_target_mean_s": embed_mean,
                   "per_teacher_exact_s_small": per_teacher_s, "per_teacher_exact_s_all": per_teacher_all,
                   "per_parent_exact_s": per_parent, "exhaustive_est_s": exhaustive,
                   "shortlist_plus_exact_s": two_stage, "speedup": exhaustive / two_stage,
                   "shortlist_under_2s": sl_max < 2.0},
        "wall_s": time.perf_counter() - t_start,
    }
    md = [f"# Specification shortlist{' (--quick)' if args.quick else ''}\n", machine_md(mach),
          f"\nRepository `{repo_dir}`. {len(sims)} **simulated** specifications (random class subsets of the demo "
          f"sources, bootstrap resamples of {sum(len(v) for v in pool.values())} embedded source images, Gaussian "
          f"noise σ={args.noise} on the embeddings; no model behind them) + {len(real)} **real** teachers "
          f"({len(repo.list())} repository teachers and head-pruned variants of the trained ones: real forwards, "
          f"classifier restricted to a class subset, not retrained). Exact OT (proto-softmax) is computed for the "
          f"real teachers only; recall is of their exact top-1 / top-3. Targets at {args.shots} shots.\n",
          "\n## Timing\n\n",
          md_table(["what", "seconds"], [
              [f"shortlist step over {len(sims) + len(real)} specs (mean / max over targets)",
               f"{sl_mean:.4f} / {sl_max:.4f}"],
              ["embed the target once with the reference model (mean)", f"{embed_mean:.3f}"],
              ["exact OT for one teacher: forward + OT (mean over small repo teachers)", f"{per_teacher_s:.3f}"],
              ["same, including the ImageNet teacher(s)", f"{per_teacher_all:.3f}"],
              [f"exhaustive exact OT for {args.n_specs} teachers (estimate: per-teacher × {args.n_specs})",
               f"{exhaustive:.1f}"],
              [f"embed + shortlist + exact OT on top {args.top_k}", f"{two_stage:.2f}"],
              ["speed-up", f"{exhaustive / two_stage:.0f}×"]]),
          f"\nShortlist step under 2 s: **{'yes' if sl_max < 2 else 'NO'}** (max {sl_max:.3f} s).\n",
          "\n## Recall of the exact-OT best real teachers in the shortlist (top_k = %d)\n\n" % args.top_k,
          md_table(["target", "exact top-3 (real)", "top-1 in mixed", "top-3 recall mixed", "real in mixed shortlist",
                    "top-1 in real-only", "top-3 recall real-only", "spec rank of exact top-1 (mixed / real)",
                    "simulated specs ahead of every real one"],
                   [[r["target"], ", ".join(r["exact_top3"]), r["top1_in_mixed"], r["top3_recall_mixed"],
                     r["real_in_mixed_shortlist"], r["top1_in_real_only"], r["top3_recall_real_only"],
                     f"{r['exact_top1_spec_rank_mixed']} / {r['exact_top1_spec_rank_real']}",
                     r["simulated_ahead_of_best_real"]]
                    for r in per_target]
                   + [["**mean**", "", mean["top1_in_mixed"], mean["top3_recall_mixed"], "",
                       mean["top1_in_real_only"], mean["top3_recall_real_only"], "", ""]]),
          "\n*mixed*: the shortlist drawn from all simulated + real specifications (simulated teachers that look "
          "like the target legitimately take slots); *real-only*: drawn from the real teachers' specifications.\n"]
    name = "shortlist_quick" if args.quick else "shortlist"
    write_results(name, payload, "".join(md))
    print(f"wrote {RESULTS / name}.md/.json in {payload['wall_s']:.0f}s", flush=True)
    return payload


if __name__ == "__main__":
    main()
