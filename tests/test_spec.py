"""Teacher specifications and the shortlist: a large repository is searched without running its teachers."""
import numpy as np
import pytest

from hubscout.rank import rank
from hubscout.spec import (SCORE_METHODS, SPEC_FILE, SPEC_VERSION, ReferenceEmbedder, Specification, SpecIndex,
                           TargetEmbedding, TeacherView, build_specification, ensure_specifications,
                           load_specification, shortlist, shortlist_plan, spec_scores)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _spec(tid, protos, agreement=None):
    """A specification whose teacher recognises class k with probability agreement[k] (the rest spread evenly)
    and whose classifier rows meet its classes as its prototypes meet each other."""
    K = len(protos)
    protos = _unit(protos)
    a = np.ones(K) if agreement is None else np.asarray(agreement, float)
    conf = np.where(np.eye(K, dtype=bool), a[:, None], ((1 - a) / max(K - 1, 1))[:, None])
    geo = protos @ protos.T
    full = np.tile(np.arange(K), (K, 1))
    return Specification(tid, "sha-" + tid, [f"{tid}-{i}" for i in range(K)], np.arange(K), protos,
                         np.full(K, 1 / K, np.float32), full, conf.astype(np.float32), full,
                         geo.astype(np.float32), np.zeros(K, np.float32))


@pytest.mark.parametrize("method", list(SCORE_METHODS))
def test_every_score_prefers_one_to_one_over_collapse(method):
    rng = np.random.default_rng(0)
    target = _unit(rng.normal(size=(4, 32)))
    matching = _spec("match", target + 0.05 * rng.normal(size=(4, 32)))
    collapsed = _spec("collapse", np.repeat(target.mean(0, keepdims=True), 3, axis=0) + 0.01 * rng.normal(size=(3, 32)))
    unrelated = _spec("far", rng.normal(size=(6, 32)))
    te = TargetEmbedding(target, list("abcd"))
    s = spec_scores([matching, collapsed, unrelated], te, method)
    assert s[0] < s[1] and s[0] < s[2]
    short = shortlist([unrelated, collapsed, matching], te, k=1, method=method)
    assert short.teacher_ids == ["match"] and short.considered == 3


def test_low_self_agreement_ranks_a_teacher_lower():
    """Same training data, worse model: the default score sees it through self-agreement."""
    rng = np.random.default_rng(1)
    target = _unit(rng.normal(size=(3, 16)))
    protos = target + 0.05 * rng.normal(size=(3, 16))
    good, noisy = _spec("good", protos, [0.95] * 3), _spec("noisy", protos, [0.4] * 3)
    te = TargetEmbedding(target, list("abc"))
    s = spec_scores([noisy, good], te)
    assert s[1] < s[0]
    assert np.all((0 <= s) & (s <= 1))
    assert spec_scores([noisy, good], te, "gmm-agreement")[1] < spec_scores([noisy, good], te, "gmm-agreement")[0]
    # From the data alone the two cannot be told apart.
    plain = spec_scores([noisy, good], te, "gmm")
    assert plain[0] == pytest.approx(plain[1])


def test_index_scores_teachers_of_different_sizes_like_one_at_a_time():
    rng = np.random.default_rng(2)
    target = TargetEmbedding(_unit(rng.normal(size=(5, 24))), list("abcde"))
    specs = [_spec(f"t{i}", rng.normal(size=(k, 24)), rng.uniform(0.3, 1, k)) for i, k in enumerate([2, 7, 1, 4])]
    index = SpecIndex.build(specs)
    for method in SCORE_METHODS:
        together = index.scores(target, method)
        alone = [SpecIndex.build([s]).scores(target, method)[0] for s in specs]
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_specification_round_trips_and_refuses_garbage():
    spec = _spec("t", np.random.default_rng(1).normal(size=(5, 16)), [0.9, 0.8, 0.7, 0.6, 0.5])
    data = spec.to_bytes()
    back = Specification.from_bytes(data)
    assert back.labels == spec.labels and back.teacher_id == "t" and back.version == SPEC_VERSION
    np.testing.assert_allclose(back.prototypes, spec.prototypes, atol=1e-3)
    np.testing.assert_allclose(back.self_agreement, [0.9, 0.8, 0.7, 0.6, 0.5], atol=1e-3)
    np.testing.assert_array_equal(back.conf_idx, spec.conf_idx)
    assert back.is_current("sha-t") and not back.is_current("other weights")
    for bad in [b"not a specification", data[:len(data) // 2], data.replace(b'"version": 2', b'"version": 1'),
                data.replace(b'"float16"', b'"object"', 1)]:
        with pytest.raises(ValueError):
            Specification.from_bytes(bad)
    with pytest.raises(ValueError):
        import dataclasses

        dataclasses.replace(spec, rows=np.arange(4))  # 4 described classes, 5 prototypes


def test_build_specification_from_labels_and_from_predictions():
    class T:
        id, weights_sha256, labels, num_classes = "t", "sha", ["a", "b", "c"], 3

    rng = np.random.default_rng(3)
    emb = _unit(rng.normal(size=(6, 8)))
    feats = rng.normal(size=(6, 5))
    W = rng.normal(size=(3, 5))
    labels = np.array([0, 0, 1, 1, -1, -1])  # class c has no labelled image: not described
    probs = np.array([[.9, .1, 0], [.5, .5, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [.2, 0, .8]], np.float32)
    spec = build_specification(T(), None, None, labels, embeddings=emb, view=TeacherView(feats, probs, W))
    assert spec.source == "training-sample" and list(spec.rows) == [0, 1] and spec.labels == ["a", "b", "c"]
    np.testing.assert_allclose(spec.prototypes[0], _unit(emb[:2].mean(0, keepdims=True))[0], atol=1e-6)
    np.testing.assert_allclose(spec.self_agreement, [0.7, 1.0], atol=1e-6)  # mean p(own class)
    dense = np.zeros((2, 2))
    np.put_along_axis(dense, spec.conf_idx, spec.conf_val, axis=1)
    np.testing.assert_allclose(dense, [[0.7, 0.3], [0.0, 1.0]], atol=1e-6)
    geo = np.zeros((2, 2))
    np.put_along_axis(geo, spec.geo_idx, spec.geo_val, axis=1)
    means = np.stack([feats[:2].mean(0), feats[2:4].mean(0)])
    np.testing.assert_allclose(geo, _unit(W[:2]) @ _unit(means).T, atol=1e-5)

    probe = build_specification(T(), None, None, embeddings=emb, view=TeacherView(feats, probs, W))
    assert probe.source == "probe-predictions"
    # Only classes with at least one image's worth of probability are described (a: 1.6, b: 2.6, c: 1.8).
    assert list(probe.rows) == [0, 1, 2]
    np.testing.assert_allclose(probe.class_mass, probs.sum(0) / len(probs), atol=1e-6)
    scarce = probs.copy()
    scarce[:, 0] = 0.05
    few = build_specification(T(), None, None, embeddings=emb, view=TeacherView(feats, scarce, W))
    assert list(few.rows) == [1, 2]


def test_shortlist_plan_runs_the_shortlist_and_every_teacher_without_a_specification():
    rng = np.random.default_rng(4)
    target = _unit(rng.normal(size=(3, 16)))
    specs = [_spec("close", target + 0.05 * rng.normal(size=(3, 16)))] + [
        _spec(f"far{i}", rng.normal(size=(4, 16))) for i in range(5)]
    candidates = ["far0", "close", "nospec", "far1", "far2", "far3", "far4"]
    run, info = shortlist_plan(candidates, SpecIndex.build(specs), TargetEmbedding(target, list("abc")), k=2)
    assert "close" in run and "nospec" in run and len(run) == 3
    assert run == [t for t in candidates if t in run]  # candidate order kept
    assert info["shortlisted"][0] == "close" and info["unspecified_run"] == ["nospec"]
    assert info["not_run_count"] == 4 and set(info["not_run"]) | set(run) == set(candidates)
    assert info["considered"] == 6 and set(info["scores"]) == set(info["shortlisted"]) and info["rule"]


@pytest.fixture(scope="module")
def embedder():
    return ReferenceEmbedder()


def test_shortlist_keeps_the_right_teacher_without_running_the_others(quick_repo, footwear_target, embedder):
    ensure_specifications(quick_repo, embedder)
    specs = {t: load_specification(quick_repo, t) for t in quick_repo.ids()}
    assert all(s is not None for s in specs.values())
    # The ImageNet teacher came without training data: its specification is its own view of the probe set.
    assert specs["imagenet-efficientnet-lite0"].source == "probe-predictions"
    assert specs["fashion-footwear"].source == "training-sample"
    assert specs["fashion-footwear"].labels == quick_repo.get("fashion-footwear").labels
    ranking = rank(footwear_target, quick_repo, shortlist_k=1, embedder=embedder)
    assert [e.teacher_id for e in ranking.entries] == ["fashion-footwear"]
    info = ranking.to_dict()["shortlist"]
    assert info["considered"] == len(quick_repo) and info["kept"] == 1
    assert info["shortlisted"] == ["fashion-footwear"] and info["not_run_count"] == len(quick_repo) - 1


def test_stale_specification_is_not_used(quick_repo, tmp_path):
    import shutil

    from hubscout.teachers import Repository

    repo = Repository(tmp_path / "zoo")
    shutil.copytree(quick_repo.root / "fashion-footwear", repo.root / "fashion-footwear")
    assert load_specification(repo, "fashion-footwear") is not None
    spec = Specification.from_bytes((repo.root / "fashion-footwear" / SPEC_FILE).read_bytes())
    spec.version = SPEC_VERSION - 1
    (repo.root / "fashion-footwear" / SPEC_FILE).write_bytes(spec.to_bytes())
    assert load_specification(repo, "fashion-footwear") is None
