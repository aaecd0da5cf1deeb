"""Benchmark v2 (issue 12): the task manifest, the ground-truth cache keys and the statistics helpers."""
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from benchmarks import groundtruth as gtm
from benchmarks.bench_zoo import catalogue
from benchmarks.stats import bootstrap_ci, paired, summarise, task_quality, top1_and_regret, weighted_tau
from benchmarks.tasks import RELATIONS, SHOTS, load_manifest, manifest_from_families, pool_ids, relation, task_data

TASKS = load_manifest()


def test_manifest_is_the_generated_one():
    # tasks.json is what FAMILIES generate: nobody edited one without the other
    assert TASKS == manifest_from_families()["tasks"]


def test_manifest_size_halves_and_coverage():
    assert len(TASKS) >= 24
    assert len({t["id"] for t in TASKS}) == len(TASKS)
    halves = defaultdict(set)
    for t in TASKS:
        halves[t["family"]].add(t["half"])
    assert all(len(h) == 1 for h in halves.values()), "a family is split across halves"
    for half in ("dev", "test"):
        ts = [t for t in TASKS if t["half"] == half]
        assert {t["relation"] for t in ts} == set(RELATIONS), half
        assert {t["shots"] for t in ts} == set(SHOTS), half
        assert any(t["source"] == "photos" for t in ts), half
    assert all(3 <= len(t["classes"]) <= 10 for t in TASKS)
    assert all(t["test_per_class"] >= 200 for t in TASKS)
    assert len({t["seed"] for t in TASKS}) == len(TASKS)


def test_relations_follow_from_the_pools():
    cat = catalogue()
    assert len(cat) >= 20
    by_id = {c.id: c for c in cat}
    for t in TASKS:
        pool = [by_id[i] for i in pool_ids(t, cat)]
        assert len(pool) >= 10, t["id"]
        assert relation(t, pool) == t["relation"], t["id"]


@pytest.mark.parametrize("task_id", ["animals-wild-5shot", "photo-objects-5shot"])
def test_task_data_sizes_and_disjoint_photo_halves(task_id):
    t = next(x for x in TASKS if x["id"] == task_id)
    train, test = task_data(t, "train"), task_data(t, "test")
    assert Counter(train.labels.tolist()) == {c: t["shots"] for c in range(len(t["classes"]))}
    assert Counter(test.labels.tolist()) == {c: 200 for c in range(len(t["classes"]))}
    assert train.classes == test.classes == t["classes"]
    # the same manifest entry gives the same data
    assert task_data(t, "train").sha256 == train.sha256 and task_data(t, "test").sha256 == test.sha256
    # no test image is a training image
    tr = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in tr for im in test.images)


def test_cell_key_depends_on_what_fixes_the_cell_only():
    t = TASKS[0]
    b = gtm.TRANSFER.to_dict()
    k = gtm.cell_key("transfer", t, "sha-a", b, 0)
    assert k == gtm.cell_key("transfer", dict(t), "sha-a", dict(b), 0)
    # the pool, relation, half and id do not change the cell (shared by views of the same data)
    assert k == gtm.cell_key("transfer", {**t, "pool": "no-class", "relation": "outside", "half": "test",
                                          "id": "x"}, "sha-a", b, 0)
    different = [
        gtm.cell_key("distillation", t, "sha-a", b, 0),
        gtm.cell_key("transfer", {**t, "shots": t["shots"] + 1}, "sha-a", b, 0),
        gtm.cell_key("transfer", {**t, "seed": t["seed"] + 1}, "sha-a", b, 0),
        gtm.cell_key("transfer", {**t, "test_per_class": 300}, "sha-a", b, 0),
        gtm.cell_key("transfer", t, "sha-b", b, 0),
        gtm.cell_key("transfer", t, "sha-a", {**b, "checkpoints": [25]}, 0),
        gtm.cell_key("transfer", t, "sha-a", b, 1),
    ]
    assert len(set(different + [k])) == len(different) + 1
    with pytest.raises(ValueError):
        gtm.cell_key("nonsense", t, "sha-a", b, 0)
    # B's budget is a full distillation config, seed included: the pinned method with one fixed student, so a
    # later change of the product's defaults cannot move it (PROTOCOL.md §3, amendment 2)
    from hubscout.distill import DistillConfig

    b1 = gtm.distill_budget(1)
    assert b1 == {**DistillConfig(**gtm.B_DISTILL).to_dict(), "seed": 1}
    assert set(b1) == set(DistillConfig().to_dict())
    assert (b1["student_arch"], b1["teacher_views"], b1["kd"]) == ("micro", 2, "ot")
    assert gtm.distill_budget(0, gtm.QUICK_DISTILL) != gtm.distill_budget(0)


def test_options_added_later_keep_the_committed_cells_keys():
    # A distillation option added after B's cells were computed (mixup) is left out of a key at its off value:
    # the committed CE-only cells of B's budget are still found under the keys computed today.
    cells = json.loads(gtm.CONSOLIDATED.read_text())["cells"]
    pairs = {(v["task"], v["seed"]) for v in cells.values() if v["kind"] == "ce"}
    assert len(pairs) >= 9
    by_id = {t["id"]: t for t in TASKS}
    for task, seed in pairs:
        assert gtm.cell_key_for("ce", by_id[task], None, None, seed) in cells, (task, seed)
    assert gtm.distill_budget(0)["mixup"] == 0.0 and "mixup" not in gtm.budget_key(gtm.distill_budget(0))
    assert gtm.budget_key(gtm.distill_budget(0, {**gtm.B_DISTILL, "mixup": 0.4}))["mixup"] == 0.4


def test_cell_cache_roundtrip_and_consolidation(tmp_path):
    c = gtm.CellCache(tmp_path / "cells", tmp_path / "all.json")
    c.put("ab12", {"accuracy": 0.5})
    assert c.get("ab12") == {"accuracy": 0.5} and c.get("cd34") is None
    assert c.consolidate() == 1
    # a fresh cache without the per-cell files is seeded from the consolidated file
    fresh = gtm.CellCache(tmp_path / "other", tmp_path / "all.json")
    assert fresh.get("ab12") == {"accuracy": 0.5}


def test_transfer_selection_uses_validation_only():
    grid = [{"lr": 1e-3, "steps": 25, "val_acc": 0.8, "val_loss": 0.5, "test_acc": 0.99},
            {"lr": 1e-3, "steps": 50, "val_acc": 0.9, "val_loss": 0.6, "test_acc": 0.10},
            {"lr": 1e-2, "steps": 25, "val_acc": 0.9, "val_loss": 0.4, "test_acc": 0.50}]
    assert gtm._select(grid)["test_acc"] == 0.50  # best val acc, tie broken by the lower val loss
    fit, val = gtm._split(np.repeat([0, 1, 2], 5), 3, 0.2, seed=0)
    assert len(val) == 3 and len(fit) == 12 and not set(fit) & set(val)


# ------------------------------------------------------------------------------------------------ statistics

def test_top1_and_regret_hand_example():
    acc = [0.5, 0.9, 0.7]
    assert top1_and_regret([3.0, 1.0, 2.0], acc) == (0.0, pytest.approx(40.0))
    assert top1_and_regret([0.0, 1.0, 0.5], acc) == (1.0, 0.0)
    assert top1_and_regret([np.nan, -5.0, -6.0], acc) == (1.0, 0.0)  # NaN ranks last
    assert top1_and_regret([1.0, 0.0], [0.8, 0.8]) == (1.0, 0.0)  # a tie for best counts as a hit
    # a metric that gives two teachers the top score: the expectation over them (hit 1/2, regret (0 + 40) / 2)
    assert top1_and_regret([1.0, 1.0, 0.0], [0.5, 0.9, 0.7]) == (0.5, pytest.approx(20.0))


def test_weighted_tau_extremes():
    assert weighted_tau([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert weighted_tau([4, 3, 2, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(-1.0)
    assert math.isnan(weighted_tau([1, 2, 3], [0.5, 0.5, 0.5]))


def test_bootstrap_ci_hand_examples():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx([0.3, 0.3])
    lo, hi = bootstrap_ci([0.0, 1.0])
    # resampled means of two values are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # quantiles are 0 and 1
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_ci(list(np.linspace(0, 1, 101)))
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan]))
    assert bootstrap_ci([0.2, np.nan, 0.2]) == pytest.approx([0.2, 0.2])


def test_paired_difference_hand_example():
    p = paired([0.5, 0.4, 0.3, 0.2], [0.1, 0.4, 0.5, np.nan])
    # differences +0.4, 0, -0.2 (the NaN pair is left out): mean 0.0667, one win, one tie, one loss
    assert p["mean"] == pytest.approx(0.2 / 3)
    assert (p["wins"], p["ties"], p["losses"]) == (1, 1, 1)
    r = paired([1.0, 5.0], [2.0, 5.0], lower_is_better=True)  # regret: lower is a win
    assert (r["wins"], r["ties"], r["losses"]) == (1, 1, 0) and r["mean"] == pytest.approx(-0.5)
    lo, hi = paired([0.3, 0.4, 0.5], [0.1, 0.1, 0.1])["ci"]
    assert 0.2 - 1e-12 <= lo <= hi <= 0.4 + 1e-12


def test_summarise_against_itself_and_random():
    q = [task_quality([1, 2, 3], [0.1, 0.2, 0.3]), task_quality([3, 2, 1], [0.1, 0.2, 0.3])]
    s = summarise(q, q)
    assert s["tau_w"] == pytest.approx(0.0) and s["top1_hit"] == 0.5 and s["regret"] == pytest.approx(10.0)
    assert s["paired_vs_default"]["ties"] == 2 and s["n_tasks"] == 2


def test_committed_teachers_restore_with_their_weights(tmp_path):
    """The benchmark's small teachers are committed (cells are keyed by their weights' sha256): every one of the
    catalogue's non-ImageNet teachers is there, its file hashes to what its metadata says, and restore() copies
    them into an empty repository unchanged."""
    from benchmarks import bench_zoo
    from hubscout.teachers import Repository, file_sha256

    small = {t.id for t in catalogue() if not t.id.startswith("imagenet-")}
    assert {p.name for p in bench_zoo.FROZEN_DIR.iterdir() if p.is_dir()} == small
    repo = Repository(tmp_path / "zoo")
    assert bench_zoo.restore(repo) == len(small)
    for tid in small:
        t = repo.get(tid)
        assert file_sha256(t.root / "model.safetensors") == t.weights_sha256
    assert bench_zoo.restore(repo) == 0  # nothing missing, nothing copied


def test_distillation_v2_methods_and_summary_hand_example():
    from benchmarks import distillation_v2 as dv2

    assert dv2.method_budget("ce") is None and dv2.method_budget("ot") is None  # ground truth B's own cells
    assert dv2.method_budget("proto") == {**gtm.B_DISTILL, "kd": "proto"}
    assert dv2.method_budget("ot[lam=0.1]") == {**gtm.B_DISTILL, "kd": "ot", "lam": 0.1}
    assert dv2.method_budget("proto[lam=0.3;tau=2]") == {**gtm.B_DISTILL, "kd": "proto", "lam": 0.3, "tau": 2.0}
    tasks = [{"accuracy": {"ce": 0.50, "ot": 0.56}}, {"accuracy": {"ce": 0.70, "ot": 0.69}},
             {"accuracy": {"ce": 0.60, "ot": None}}]  # a task whose cells are not all done is left out
    s = dv2.summarise(tasks, ["ce", "ot"])
    assert s["ot"]["n_tasks"] == 2 and s["ot"]["accuracy"] == pytest.approx(0.625)
    assert s["ot"]["gain_vs_ce"] == pytest.approx(2.5) and s["ot"]["worst_task_gain_vs_ce"] == pytest.approx(-1.0)
    assert s["ot"]["tasks_better_than_ce"] == 1 and s["ce"]["gain_vs_ce"] == 0.0
