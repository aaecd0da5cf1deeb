"""Ranking throughput and memory: how much does ranking add to the teachers' own forward passes?

* throughput (images/s) of ``rank`` (one teacher, uncached; OT and all metrics) vs the raw forward pass of the
  same teacher over the same images in the same run (``model(x)`` batch by batch): the overhead ratio;
* time split between forward and scoring (OT vs the baselines);
* peak memory (tracemalloc: Python/numpy allocations; ``resource.getrusage`` max RSS: the whole process) of
  ranking a large dataset (20k images: Fashion-MNIST test 10k + 10k train; every registered metric) against what the
  whole dataset would take as model-ready floats, to show that inputs are streamed;
* scaling: time vs number of teachers and vs dataset size (PNG).

    python -m benchmarks.speed [--quick] [--repo DIR]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, limit_threads, machine, machine_md, md_table, resolve_repo, write_results


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def fashion_dataset(n: int, seed: int = 0):
    """``n`` Fashion-MNIST images: the 10k test split first, then training images."""
    from hubscout.data import Dataset
    from hubscout.sources import load_source

    test = load_source("fashion", "test")
    parts_x, parts_y = [test.images[:n]], [test.labels[:n]]
    if n > len(test):
        train = load_source("fashion", "train")
        idx = np.sort(np.random.default_rng(seed).choice(len(train), n - len(test), replace=False))
        parts_x.append(train.images[idx])
        parts_y.append(train.labels[idx])
    return Dataset(np.concatenate(parts_x), np.concatenate(parts_y), test.classes, name=f"fashion-{n}")


def raw_forward_s(teacher, ds, batch_size: int = 64) -> float:
    import torch

    from hubscout.data import iter_batches

    model = teacher.load_model("cpu")
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in iter_batches(ds.images, teacher.input, batch_size):
            model(x)
    return time.perf_counter() - t0


def rank_once(ds, repo, tids, metrics=("ot",)):
    from hubscout.rank import rank

    t0 = time.perf_counter()
    r = rank(ds, repo, metrics=list(metrics), teacher_ids=tids, cache=None, device="cpu")
    return time.perf_counter() - t0, r


def memory_table(memory: dict, head) -> str:
    """The memory measurement as a markdown table (the full run and ``--memory-only`` print the same)."""
    return md_table(["quantity", "MB"], [
        ["dataset as uint8 (held by the caller)", f"{memory['dataset_uint8_mb']:.1f}"],
        [f"all inputs as model-ready floats ({memory['channels']}×{memory['input_size']}²) — not materialised",
         f"{memory['all_inputs_as_float_mb']:.1f}"],
        [f"outputs kept for scoring: N×(D+K) float32, D={head.in_features}, K={head.out_features}",
         f"{memory['outputs_float32_mb']:.1f}"],
        ["one batch of model inputs (64 images)", f"{memory['one_input_batch_mb']:.2f}"],
        ["tracemalloc peak during rank (Python + numpy)", f"{memory['tracemalloc_peak_mb']:.1f}"],
        ["max RSS before → after", f"{memory['maxrss_before_mb']:.0f} → {memory['maxrss_after_mb']:.0f}"],
        ["max RSS growth", f"{memory['maxrss_growth_mb']:.1f}"]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="ranking speed benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repo")
    ap.add_argument("--include-imagenet", action="store_true",
                    help="also time the 224-px ImageNet teachers (slow on CPU)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory measurement (results/speed_memory_<teacher>.md/.json)")
    ap.add_argument("--memory-teacher", help="teacher for the memory measurement (default: the first small one)")
    ap.add_argument("--memory-n", type=int, help="images for the memory measurement")
    args = ap.parse_args(argv)
    limit_threads(1)
    from hubscout.teachers import Repository

    t_start = time.perf_counter()
    repo_dir = resolve_repo(args.repo, args.quick)
    repo = Repository(repo_dir)
    teachers = [t for t in repo.list() if args.include_imagenet or t.input.size <= 64]
    tids = [t.id for t in teachers]
    big_n = 10000 if args.quick else 20000
    thr_n = 2000 if args.quick else 5000
    sizes = [500, 1000, 2000, 4000] if args.quick else [1000, 2500, 5000, 10000, 20000]
    scale_n = 1000 if args.quick else 2000
    print(f"repo {repo_dir}: {len(tids)} teachers {tids}", flush=True)

    # 1. Memory of ranking the big dataset with one teacher (first, so max RSS is not inflated by other steps).
    big_n = args.memory_n or big_n
    big = fashion_dataset(big_n)
    t_mem = repo.get(args.memory_teacher) if args.memory_teacher else teachers[0]
    raw_forward_s(t_mem, fashion_dataset(64))  # warm-up: model load, allocator
    from hubscout.scores import METRICS

    all_metrics = list(METRICS)  # every registered metric: the default ones and the baselines
    rss0 = _maxrss_mb()
    tracemalloc.start()
    mem_s, r_mem = rank_once(big, repo, [t_mem.id], metrics=all_metrics)
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _maxrss_mb()
    e = r_mem.entries[0]
    in_float_mb = big_n * t_mem.input.channels * t_mem.input.size ** 2 * 4 / 2 ** 20
    head = t_mem.load_model("cpu").get_classifier()
    outputs_mb = big_n * (head.in_features + head.out_features) * 4 / 2 ** 20  # float32 features + logits kept
    batch_mb = 64 * t_mem.input.channels * t_mem.input.size ** 2 * 4 / 2 ** 20
    memory = {"n_images": big_n, "teacher": t_mem.id, "rank_s": mem_s, "images_per_s": big_n / mem_s,
              "tracemalloc_peak_mb": tm_peak / 2 ** 20, "maxrss_before_mb": rss0, "maxrss_after_mb": rss1,
              "maxrss_growth_mb": rss1 - rss0, "dataset_uint8_mb": big.images.nbytes / 2 ** 20,
              "all_inputs_as_float_mb": in_float_mb,
              "outputs_float32_mb": outputs_mb, "one_input_batch_mb": batch_mb, "feature_dim": head.in_features, "channels": t_mem.input.channels,
              "input_size": t_mem.input.size, "metrics": all_metrics,
              "forward_s": e.forward_s, "score_s": e.score_s}
    del big
    print(f"memory: {memory}", flush=True)
    if args.memory_only:
        mach = machine()
        # A smaller run (a --quick check) must not overwrite the 20,000-image figure.
        name = f"speed_memory_{t_mem.id}" + ("" if big_n == 20000 else f"_{big_n}")
        md = [f"# Ranking memory: {big_n} images, `{t_mem.id}` ({t_mem.input.channels}×{t_mem.input.size}² inputs)\n",
              machine_md(mach), "\n", memory_table(memory, head),
              f"\nRanked (all metrics) in {mem_s:.1f} s ({big_n / mem_s:.1f} img/s; forward {e.forward_s:.1f} s, "
              f"scoring {e.score_s:.2f} s).\n"]
        write_results(name, {"benchmark": "speed-memory", "machine": mach, "repo": str(repo_dir), "memory": memory},
                      "".join(md))
        print(f"wrote {RESULTS / name}.md/.json", flush=True)
        return {"memory": memory}

    # 2. Throughput: ranking vs raw forward, per teacher, same images, same run.
    # Interleaved and repeated; the fastest of ``reps`` is kept for each (the least disturbed by other load).
    ds = fashion_dataset(thr_n)
    thr = []
    reps = 3
    for t in teachers:
        raws, ots, alls = [], [], []
        for _ in range(reps):
            raws.append(raw_forward_s(t, ds))
            ots.append(rank_once(ds, repo, [t.id], metrics=("ot",)))
            alls.append(rank_once(ds, repo, [t.id], metrics=("ot", "leep", "nce", "hscore", "logme")))
        raw = min(raws)
        rs_ot, r_ot = min(ots, key=lambda x: x[0])
        rs_all, r_all = min(alls, key=lambda x: x[0])
        thr.append({"teacher": t.id, "n": thr_n, "raw_forward_s": raw, "raw_images_per_s": thr_n / raw,
                    "rank_ot_s": rs_ot, "rank_ot_images_per_s": thr_n / rs_ot, "overhead_ot": rs_ot / raw,
                    "rank_all_s": rs_all, "overhead_all": rs_all / raw,
                    "ot_forward_s": r_ot.entries[0].forward_s, "ot_score_s": r_ot.entries[0].score_s,
                    "all_score_s": r_all.entries[0].score_s})
        print(f"throughput {thr[-1]}", flush=True)

    # 3. Scaling: vs number of teachers (fixed size), vs dataset size (one teacher).
    ds_s = fashion_dataset(scale_n)
    by_teachers = []
    for k in range(1, len(tids) + 1):
        s = min(rank_once(ds_s, repo, tids[:k])[0] for _ in range(2))
        by_teachers.append({"n_teachers": k, "s": s})
    by_size = []
    for n in sizes:
        d = fashion_dataset(n)
        s, r = min((rank_once(d, repo, [t_mem.id]) for _ in range(2)), key=lambda x: x[0])
        by_size.append({"n": n, "s": s, "forward_s": r.entries[0].forward_s, "score_s": r.entries[0].score_s})
    print(f"scaling {by_teachers} {by_size}", flush=True)

    mach = machine()
    name = "speed_quick" if args.quick else "speed"
    payload = {"benchmark": "speed", "quick": args.quick, "machine": mach, "repo": str(repo_dir), "teachers": tids,
               "memory": memory, "throughput": thr, "scaling_teachers": by_teachers, "scaling_size": by_size,
               "wall_s": time.perf_counter() - t_start}
    _plots(by_teachers, by_size, scale_n, t_mem.id, RESULTS / f"{name}_scaling.png")
    tot_raw = sum(x["raw_forward_s"] for x in thr)
    tot_ot = sum(x["rank_ot_s"] for x in thr)
    md = [f"# Ranking speed{' (--quick)' if args.quick else ''}\n", machine_md(mach),
          f"\nRepository `{repo_dir}`; teachers {', '.join(tids)}"
          f"{'' if args.include_imagenet else ' (224-px ImageNet teachers left out; --include-imagenet adds them)'}."
          f" Fashion-MNIST images; batch 64; CPU, 1 thread; no outputs cache.\n",
          f"\n## Throughput: ranking vs raw forward ({thr_n} images)\n\n",
          md_table(["teacher", "raw fwd img/s", "rank (ot) img/s", "overhead ot", "overhead all metrics",
                    "forward s", "OT scoring s", "all-metric scoring s"],
                   [[x["teacher"], f"{x['raw_images_per_s']:.0f}", f"{x['rank_ot_images_per_s']:.0f}",
                     f"{x['overhead_ot']:.2f}×", f"{x['overhead_all']:.2f}×", x["ot_forward_s"], x["ot_score_s"],
                     x["all_score_s"]] for x in thr]),
          f"\nAll teachers: ranking by OT {tot_ot:.2f} s vs raw forward {tot_raw:.2f} s "
          f"(**{tot_ot / tot_raw:.2f}×**). The overhead is the feature/logit copy out, the pre-logit feature "
          f"path, and the scoring.\n",
          f"\n## Memory: ranking {big_n} images with `{t_mem.id}` (all metrics)\n\n",
          memory_table(memory, head),
          f"\nRanked in {mem_s:.1f} s ({big_n / mem_s:.0f} img/s; forward {e.forward_s:.1f} s, scoring "
          f"{e.score_s:.2f} s). The outputs (features N×D and logits N×K) are kept for scoring by design; only the "
          f"model inputs are streamed batch by batch. With these 32-px teachers the whole input tensor would be "
          f"small anyway; for a 224-px RGB teacher it would be N×3×224²×4 B = {big_n * 3 * 224 * 224 * 4 / 2 ** 30:.1f} GiB, "
          f"which rank() never builds: it converts one batch at a time (the 224-px case is not measured here).\n",
          f"\n## Scaling\n\n![scaling]({name}_scaling.png)\n\n",
          md_table(["teachers", f"s ({scale_n} images)"], [[x["n_teachers"], x["s"]] for x in by_teachers]), "\n",
          md_table(["images", "s", "forward s", "scoring s", "img/s"],
                   [[x["n"], x["s"], x["forward_s"], x["score_s"], f"{x['n'] / x['s']:.0f}"] for x in by_size])]
    write_results(name, payload, "".join(md))
    print(f"wrote {RESULTS / name}.md/.json in {payload['wall_s']:.0f}s", flush=True)
    return payload


def _plots(by_teachers, by_size, scale_n, tid, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    a.plot([x["n_teachers"] for x in by_teachers], [x["s"] for x in by_teachers], "o-")
    a.set_xlabel("teachers"), a.set_ylabel("rank time (s)"), a.set_title(f"{scale_n} images")
    b.plot([x["n"] for x in by_size], [x["s"] for x in by_size], "o-", label="total")
    b.plot([x["n"] for x in by_size], [x["forward_s"] for x in by_size], "s--", label="forward")
    b.plot([x["n"] for x in by_size], [x["score_s"] for x in by_size], "^:", label="OT scoring")
    b.set_xlabel("images"), b.set_ylabel("s"), b.set_title(f"one teacher ({tid})"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
