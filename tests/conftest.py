"""Shared fixtures.

``quick_repo`` is the quick demo zoo (EfficientNet-Lite0 plus four small teachers) with their search
specifications, built once and cached under ``.pytest_cache/`` keyed by the code that builds it, so repeated local
runs start at once; it is shared by the whole session: treat it as read-only (copy it to change it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

# Before torch is imported: OpenMP threads that wait passively instead of spinning. On a machine whose cores are
# shared with other processes, spinning threads wait for each other and torch runs 5-20× slower; the results are
# the same. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
# The code whose change must rebuild the cached quick zoo.
ZOO_CODE = ["hubscout/zoo.py", "hubscout/sources.py", "hubscout/teachers.py"]


def _zoo_key() -> str:
    import timm
    import torch

    h = hashlib.sha256(f"torch {torch.__version__} timm {timm.__version__}".encode())
    for rel in ZOO_CODE:
        h.update(rel.encode())
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def quick_repo(request, tmp_path_factory):
    from hubscout.teachers import Repository
    from hubscout.zoo import build_demo_zoo

    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("hubscout-quick-zoo")) if cache is not None else tmp_path_factory.mktemp("quick-zoo")
    final = base / _zoo_key()
    if not final.is_dir():
        # Build beside it and rename into place: an interrupted or concurrent build never leaves half a zoo.
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
        try:
            # One torch thread: the same weights on any machine, and no slowdown when other test processes
            # keep the cores busy (two threads on two busy cores spin-wait for each other).
            build_demo_zoo(tmp / "zoo", quick=True, seed=0, num_threads=1)
            try:
                os.rename(tmp / "zoo", final)
            except OSError:
                if not final.is_dir():  # lost a race to another session: use its zoo
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in base.iterdir():  # zoos of older code, unless a session may still be using one
            if old != final and not old.name.startswith(".") and time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
    repo = Repository(final)
    from hubscout.spec import ensure_specifications

    # As `hubscout zoo demo` and the service's first start do; computes only missing or stale specifications
    # (atomic writes: concurrent sessions write the same bytes).
    ensure_specifications(repo)
    return repo


@pytest.fixture
def footwear_target():
    """10 shots of each of sandal, sneaker and ankle-boot (Fashion-MNIST train split, seed 0)."""
    from hubscout.sources import demo_target

    return demo_target("footwear", 10, seed=0)


@pytest.fixture
def footwear_test():
    """100 held-out test images of each footwear class."""
    from hubscout.sources import demo_target

    return demo_target("footwear", 10, seed=0, split="test", max_per_class=100)


@pytest.fixture
def poisoned_teacher():
    """``add(repo)`` stores a teacher whose weights are finite (they pass the repository's checks) but whose logits
    overflow to ±inf on any image, and returns its id: a distillation from it must fail, never succeed."""
    import torch

    from hubscout.teachers import InputConfig, build_model

    def add(repo) -> str:
        torch.manual_seed(0)
        state = build_model("test_efficientnet", 4, 1).state_dict()
        state["conv_head.weight"] *= 1e4
        state["classifier.weight"][0] = 3e38
        state["classifier.weight"][1] = -3e38
        repo.add(arch="test_efficientnet", weights=state, labels=list("wxyz"), name="poisoned",
                 input=InputConfig(32, 1, (0.5,), (0.5,)), teacher_id="poisoned", overwrite=True)
        return "poisoned"

    return add
