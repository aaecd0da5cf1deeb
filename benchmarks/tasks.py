"""The task manifest of benchmark v2 (``benchmarks/tasks.json``) and the data behind each task.

A task is a few-shot target (``parts``: classes picked from sources, ``shots`` per class, a draw ``seed``) ranked
within a teacher ``pool`` cut from the benchmark repository; its ``relation`` to that pool follows from class
names and domains (:func:`relation`) and is checked against the manifest. See ``benchmarks/PROTOCOL.md``.

    python -m benchmarks.tasks --write    # regenerate tasks.json from FAMILIES (only before any result)
"""
from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MANIFEST = Path(__file__).resolve().parent / "tasks.json"
RELATIONS = ("inside", "overlapping", "outside", "cross-domain")
POOLS = ("all", "no-superset", "no-class", "no-domain")
SHOTS = (5, 10, 20, 50)
TEST_PER_CLASS = 200
# The domain of each data source: a teacher and a target share a domain when their images look alike.
DOMAINS = {"fashion": "fashion", "animals": "silhouettes", "mnist": "digits", "digits": "digits",
           "imagenet": "natural-photos", "photos": "natural-photos"}

# Natural photos shipped with scikit-image (``skimage.data.<name>``) and scikit-learn (``load_sample_image``):
# one photo is one class. Class name -> (library, name).
PHOTOS = {
    "chelsea-cat": ("skimage", "chelsea"), "coffee": ("skimage", "coffee"), "rocket": ("skimage", "rocket"),
    "astronaut": ("skimage", "astronaut"), "china-temple": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"), "hubble-deep-field": ("skimage", "hubble_deep_field"),
    "immunohistochemistry": ("skimage", "immunohistochemistry"), "retina": ("skimage", "retina"),
}
PHOTO_SIZE = 64

# family -> (half, parts, [(shots, pool, relation), ...]). Halves are split by family, never by shot count.
_FOOTWEAR = ["sandal", "sneaker", "ankle-boot"]
FAMILIES: dict[str, tuple[str, list, list]] = {
    # ---------------------------------------------------------------- dev
    "fashion-footwear": ("dev", [("fashion", _FOOTWEAR)],
                         [(5, "all", "inside"), (50, "all", "inside"), (10, "no-class", "outside")]),
    "animals-farm": ("dev", [("animals", ["cow", "horse", "sheep"])],
                     [(10, "all", "inside"), (20, "all", "inside"), (5, "no-class", "outside")]),
    "fashion-mixed": ("dev", [("fashion", ["trouser", "dress", "bag", "sneaker"])],
                      [(20, "no-superset", "overlapping"), (10, "no-domain", "cross-domain")]),
    "animals-mixed": ("dev", [("animals", ["cat", "dog", "giraffe", "zebra", "bird"])],
                      [(10, "no-superset", "overlapping"), (50, "no-domain", "cross-domain")]),
    "photo-objects": ("dev", [("photos", ["chelsea-cat", "coffee", "rocket", "astronaut"])],
                      [(5, "all", "outside"), (20, "all", "outside")]),
    # ---------------------------------------------------------------- test
    "fashion-tops": ("test", [("fashion", ["t-shirt", "pullover", "coat", "shirt"])],
                     [(10, "all", "inside"), (20, "all", "inside"), (50, "no-class", "outside")]),
    "animals-wild": ("test", [("animals", ["bear", "elephant", "giraffe", "zebra"])],
                     [(5, "all", "inside"), (50, "all", "inside"), (20, "no-class", "outside")]),
    "fashion-mixed2": ("test", [("fashion", ["t-shirt", "sandal", "coat", "bag", "trouser"])],
                       [(5, "no-superset", "overlapping"), (20, "no-domain", "cross-domain")]),
    "animals-mixed2": ("test", [("animals", ["dog", "horse", "elephant", "bird", "sheep", "bear"])],
                       [(20, "no-superset", "overlapping"), (5, "no-domain", "cross-domain")]),
    "photo-scenes": ("test", [("photos", ["china-temple", "flower", "hubble-deep-field", "immunohistochemistry",
                                          "retina"])],
                     [(10, "all", "outside"), (50, "all", "outside")]),
}


def manifest_from_families() -> dict[str, Any]:
    tasks = []
    for fi, (family, (half, parts, views)) in enumerate(FAMILIES.items()):
        for vi, (shots, pool, rel) in enumerate(views):
            tasks.append({
                "id": f"{family}-{shots}shot" + ("" if pool == "all" else f"-{pool}"),
                "family": family, "half": half, "source": "+".join(dict.fromkeys(s for s, _ in parts)),
                "parts": [[s, list(c)] for s, c in parts], "classes": [c for _, cs in parts for c in cs],
                "shots": shots, "seed": 1000 + 10 * fi + vi, "pool": pool, "relation": rel,
                "test_per_class": TEST_PER_CLASS,
            })
    return {"version": 2, "description": "benchmark v2 task manifest; see benchmarks/PROTOCOL.md",
            "tasks": tasks}


def load_manifest(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["tasks"]


# ------------------------------------------------------------------------------------------- pools, relations

def teacher_domains(metadata: dict[str, Any]) -> set[str]:
    """The domains a teacher was trained on, from its metadata's ``source`` ("fashion", "animals+fashion", ...)."""
    return {DOMAINS.get(s, s) for s in str(metadata.get("source", "")).split("+") if s}


def task_domain(task: dict[str, Any]) -> set[str]:
    return {DOMAINS[s] for s, _ in task["parts"]}


def pool_ids(task: dict[str, Any], teachers: Sequence[Any]) -> list[str]:
    """The ids of the teachers a task is ranked within (``teachers``: objects with ``id``, ``labels``, ``metadata``).

    ``all``: every teacher; ``no-superset``: without those that know every target class; ``no-class``: without
    any that knows one; ``no-domain``: without any that knows one or was trained on the target's domain.
    """
    tc = set(task["classes"])
    dom = task_domain(task)
    keep = {
        "all": lambda t: True,
        "no-superset": lambda t: not tc <= set(t.labels),
        "no-class": lambda t: not tc & set(t.labels),
        "no-domain": lambda t: not tc & set(t.labels) and not teacher_domains(t.metadata) & dom,
    }[task["pool"]]
    return [t.id for t in teachers if keep(t)]


def relation(task: dict[str, Any], pool: Sequence[Any]) -> str:
    """inside: a pool teacher knows every target class; overlapping: one knows some, none all; outside: none knows
    any but one shares the target's domain; cross-domain: none knows any class and none shares the domain."""
    tc = set(task["classes"])
    if any(tc <= set(t.labels) for t in pool):
        return "inside"
    if any(tc & set(t.labels) for t in pool):
        return "overlapping"
    if any(teacher_domains(t.metadata) & task_domain(task) for t in pool):
        return "outside"
    return "cross-domain"


# ------------------------------------------------------------------------------------------------------ data

@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """One shipped photo as RGB uint8 H×W×3 (read-only)."""
    lib, key = PHOTOS[name]
    if lib == "skimage":
        import skimage.data

        img = getattr(skimage.data, key)()
    else:
        from sklearn.datasets import load_sample_image

        img = load_sample_image(key)
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
    img.setflags(write=False)
    return img


def photo_crops(name: str, split: str, n: int, seed: int, size: int = PHOTO_SIZE) -> np.ndarray:
    """``n`` augmented square crops of one photo, ``size``×``size`` RGB uint8.

    ``train`` crops come from the left half of the photo, ``test`` crops from the right half only, so no test
    pixel was ever in a training crop. Each crop: side 35–70 % of the half's shorter side, random position,
    random mirror, brightness and contrast jitter of ±15 %.
    """
    from PIL import Image

    img = _photo(name)
    h, w, _ = img.shape
    half = img[:, : w // 2] if split == "train" else img[:, w // 2:]
    hh, hw = half.shape[:2]
    rng = np.random.default_rng([seed, sum(map(ord, name)), 0 if split == "train" else 1])
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        side = int(rng.uniform(0.35, 0.7) * min(hh, hw))
        y, x = rng.integers(0, hh - side + 1), rng.integers(0, hw - side + 1)
        crop = Image.fromarray(half[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        a = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        a = (a - a.mean()) * rng.uniform(0.85, 1.15) + a.mean() * rng.uniform(0.85, 1.15)
        out[i] = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return out


def _photo_task(classes: Sequence[str], split: str, n: int, seed: int, name: str):
    from hubscout.data import Dataset

    images = np.concatenate([photo_crops(c, split, n, seed) for c in classes])
    labels = np.repeat(np.arange(len(classes)), n)
    return Dataset(images, labels, list(classes), name=name, meta={"source": "photos", "split": split})


def _topped_up(ds, per_class: int, seed: int):
    """At most ``per_class`` images a class; a class with fewer gets mirror images of its own (distinct, seeded)
    images until it has ``per_class`` (Animal-MNIST's held-out split has 162–200 a class)."""
    from hubscout.data import Dataset
    from hubscout.sources import sample_per_class

    ds = sample_per_class(ds, per_class, seed=seed)
    rng = np.random.default_rng(seed)
    imgs, labs = [ds.images], [ds.labels]
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.labels == c)
        short = per_class - len(idx)
        if short > 0:
            pick = rng.choice(idx, short, replace=False)
            imgs.append(ds.images[pick][:, :, ::-1])
            labs.append(ds.labels[pick])
    return Dataset(np.concatenate(imgs), np.concatenate(labs), ds.classes, name=ds.name, meta=dict(ds.meta))


def task_data(task: dict[str, Any], split: str):
    """The task's few-shot ``train`` set (``shots`` a class, drawn with its seed) or its ``test`` set
    (``test_per_class`` a class, the same for every teacher and ground truth)."""
    from hubscout.sources import sample_per_class, task_data as source_task

    if task["source"] == "photos":
        classes = task["classes"]
        if split == "train":
            return _photo_task(classes, "train", task["shots"], task["seed"], f"{task['id']}-train")
        return _photo_task(classes, "test", task["test_per_class"], task["seed"], f"{task['id']}-test")
    parts = [(s, c) for s, c in task["parts"]]
    if split == "train":
        ds = sample_per_class(source_task(parts, "train"), task["shots"], seed=task["seed"])
        ds.name = f"{task['id']}-train"
        return ds
    ds = _topped_up(source_task(parts, "test"), task["test_per_class"], task["seed"])
    ds.name = f"{task['id']}-test"
    return ds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write tasks.json from FAMILIES")
    args = ap.parse_args(argv)
    m = manifest_from_families()
    if args.write:  # one task a line: the manifest is read by people too
        rows = ",\n".join("  " + json.dumps(t) for t in m["tasks"])
        MANIFEST.write_text(f'{{"version": 2, "description": {json.dumps(m["description"])},\n "tasks": [\n{rows}\n ]}}\n')
    for t in m["tasks"]:
        print(f"{t['half']:4} {t['id']:40} {t['relation']:12} {len(t['classes'])} classes")


if __name__ == "__main__":
    main()
