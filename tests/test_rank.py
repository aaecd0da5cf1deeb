"""Ranking on the quick demo repository: the right teacher first, explanations, caching, errors."""
import numpy as np
import pytest

from hubscout.extract import FileCache
from hubscout.rank import METRIC_NAMES, rank, resolve_metrics, weights_from_scores
from hubscout.sources import demo_target
from hubscout.teachers import TeacherNotFound


def test_footwear_target_ranks_the_footwear_teacher_first(quick_repo, footwear_target):
    ranking = rank(footwear_target, quick_repo, metrics="ot")
    assert [e.rank for e in ranking.entries] == list(range(1, len(quick_repo) + 1))
    assert ranking.best().teacher_id == "fashion-footwear"
    scores = [e.scores["ot"] for e in ranking.entries]
    assert scores == sorted(scores), "lower OT cost must rank higher"
    assert all(0.0 <= s <= 1.0 for s in scores)
    # The footwear teacher's plan sends each target class to its namesake.
    corr = ranking.best().correspondences
    assert set(corr) == set(footwear_target.classes)
    for cls, pairs in corr.items():
        assert pairs[0][0] == cls
        assert pairs[0][1] > 0.5
    # Its plan, as stored for the heatmap: every teacher class down, every target class across.
    teacher = quick_repo.get("fashion-footwear")
    plan = ranking.to_dict()["teachers"][0]["plan"]
    assert plan["teacher_classes"] == teacher.labels and plan["target_classes"] == footwear_target.classes
    assert not plan["truncated"] and plan["kept_share"] == pytest.approx([1.0] * 3, abs=1e-3)
    for j, cls in enumerate(footwear_target.classes):
        assert plan["share"][teacher.labels.index(cls)][j] == pytest.approx(corr[cls][0][1], abs=1e-4)


def test_all_metrics_have_directions_and_json(quick_repo, footwear_target):
    ranking = rank(footwear_target, quick_repo, metrics="all", top_k=2)
    d = ranking.to_dict()
    assert d["metrics"] == list(METRIC_NAMES) and d["primary"] == "ot"
    # The v1 metrics first, then the benchmark-v2 baselines the registry adds (all higher-is-better).
    assert list(d["directions"])[:5] == ["ot", "leep", "nce", "hscore", "logme"]
    assert d["directions"] == {m: "lower" if m == "ot" else "higher" for m in METRIC_NAMES}
    assert len(d["teachers"]) == 2
    for t in d["teachers"]:
        assert set(t["scores"]) == set(METRIC_NAMES)
        assert all(np.isfinite(v["value"]) for v in t["scores"].values())
    # The prediction-based baselines agree that the footwear teacher beats the ImageNet one on footwear.
    # (LogME does not: on 30 samples it prefers the 1280-d ImageNet features, see benchmarks/.)
    full = {e.teacher_id: e.scores for e in rank(footwear_target, quick_repo, metrics="all").entries}
    for m in ("leep", "nce"):
        assert full["fashion-footwear"][m] > full["imagenet-efficientnet-lite0"][m], m


def test_cached_rerank_runs_no_forward_pass(quick_repo, footwear_target, tmp_path):
    cache = FileCache(tmp_path)
    first = rank(footwear_target, quick_repo, metrics=["ot", "leep"], cache=cache)
    second = rank(footwear_target, quick_repo, metrics=["ot", "leep"], cache=cache)
    assert not any(e.cached for e in first.entries)
    assert all(e.cached for e in second.entries)
    assert [e.teacher_id for e in first.entries] == [e.teacher_id for e in second.entries]
    for a, b in zip(first.entries, second.entries):
        assert a.scores == pytest.approx(b.scores)


def test_imagenet_plan_maps_animals_to_animal_classes(quick_repo):
    target = demo_target("animals-wild", shots=20)
    ranking = rank(target, quick_repo, metrics="ot", teacher_ids=["imagenet-efficientnet-lite0"])
    corr = ranking.best().correspondences
    assert set(corr) == {"bear", "elephant", "giraffe", "zebra"}
    names = [name for pairs in corr.values() for name, _ in pairs]
    assert all(name in quick_repo.get("imagenet-efficientnet-lite0").labels for name in names)
    # A 1000-class plan is kept to its heaviest 60 rows, which hold every top correspondence.
    plan = ranking.best().plan_summary
    assert plan["truncated"] and plan["teacher_num_classes"] == 1000 and len(plan["teacher_classes"]) == 60
    assert set(names) <= set(plan["teacher_classes"])
    shares = [share for pairs in corr.values() for _, share in pairs]
    assert all(0 < s <= 1 for s in shares)


def test_matches_bridge_zebra_to_imagenet_zebra(quick_repo):
    """To ImageNet models every Animal-MNIST silhouette looks a bit like a hatchet; the centred prototype cost of
    the matches discounts that shared offset, and the zebra silhouettes (striped) then sit nearest ImageNet's zebra
    row, whatever cost scores the ranking."""
    from hubscout.extract import outputs_for
    from hubscout.ot import cost_matrix, nearest_classes

    target = demo_target("animals-all", shots=20)
    lite0 = quick_repo.get("imagenet-efficientnet-lite0")
    for cost in ("joint", "proto-softmax"):
        entry = rank(target, quick_repo, metrics="ot", teacher_ids=[lite0.id], cost=cost).best()
        assert entry.matches["zebra"][0][0] == "zebra", (cost, entry.matches["zebra"])
    # Other classes land on the right kind of ImageNet class too: birds on birds, dogs on dog breeds.
    birds = set(lite0.labels[7:25]) | set(lite0.labels[80:101]) | set(lite0.labels[127:147])
    dogs = set(lite0.labels[151:269])
    assert entry.matches["bird"][0][0] in birds
    assert entry.matches["dog"][0][0] in dogs
    # Without centring the shared offset wins: zebra is not among the nearest three.
    out, _ = outputs_for(lite0, target)
    raw = cost_matrix("proto", classifier_weight=out.classifier_weight, features=out.features,
                      labels=target.labels, n_classes=target.num_classes)
    assert "zebra" not in [name for name, _ in nearest_classes(raw, lite0.labels, target.classes)["zebra"]]


def test_errors_name_the_problem(quick_repo, footwear_target):
    with pytest.raises(TeacherNotFound):
        rank(footwear_target, quick_repo, teacher_ids=["no-such-teacher"])
    with pytest.raises(ValueError, match="unknown metric"):
        rank(footwear_target, quick_repo, metrics="accuracy")
    assert resolve_metrics("all") == list(METRIC_NAMES)
    assert resolve_metrics("leep,ot") == ["leep", "ot"]


def test_relatedness_weights_favour_the_closer_teacher():
    w = weights_from_scores([0.1, 0.4, 0.1])
    assert w[0] == pytest.approx(w[2]) and w[0] > 10 * w[1] and sum(w) == pytest.approx(1.0)
