"""Teacher specifications and the shortlist: a large repository is searched without running its teachers."""
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest

from hubscout.rank import rank
from hubscout.scores import DEFAULT_METRIC
from hubscout.spec import (COVERAGE_RATIO, DEFAULT_METHOD, EXHAUSTIVE_MAX_TEACHERS, PROBE_SOURCE, SCORE_METHODS,
                           SPEC_FILE, SPEC_VERSION, ReferenceEmbedder, Specification, SpecIndex, TargetEmbedding,
                           TeacherView, build_specification, class_statistics, embed_target, ensure_specifications,
                           knowledge, load_specification, method_for, probe_gram, probe_images, probe_labels,
                           run_mask, shortlist, shortlist_plan, spec_scores)

# The scores that map the target onto each teacher's own described classes in the reference embedding (the OT
# emulations and their ablations); ``probe-hscore`` reads the teacher's probe geometry instead (tests below).
REFERENCE_SPACE_METHODS = [m for m in SCORE_METHODS if SCORE_METHODS[m].needs != "probe"]
OT_METHOD = method_for("ot")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _spec(tid, protos, agreement=None, gram=None):
    """A specification whose teacher recognises class k with probability agreement[k] (the rest spread evenly)
    and whose classifier rows meet its classes as its prototypes meet each other; ``gram``: its probe geometry."""
    K = len(protos)
    protos = _unit(protos)
    a = np.ones(K) if agreement is None else np.asarray(agreement, float)
    conf = np.where(np.eye(K, dtype=bool), a[:, None], ((1 - a) / max(K - 1, 1))[:, None])
    geo = protos @ protos.T
    full = np.tile(np.arange(K), (K, 1))
    extra = {} if gram is None else {"probe_gram": np.asarray(gram, np.float32)}
    return Specification(tid, "sha-" + tid, [f"{tid}-{i}" for i in range(K)], np.arange(K), protos,
                         np.full(K, 1 / K, np.float32), full, conf.astype(np.float32), full,
                         geo.astype(np.float32), np.zeros(K, np.float32), **extra)


@pytest.mark.parametrize("method", REFERENCE_SPACE_METHODS)
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
    """Same training data, worse model: the OT emulation sees it through self-agreement."""
    rng = np.random.default_rng(1)
    target = _unit(rng.normal(size=(3, 16)))
    protos = target + 0.05 * rng.normal(size=(3, 16))
    good, noisy = _spec("good", protos, [0.95] * 3), _spec("noisy", protos, [0.4] * 3)
    te = TargetEmbedding(target, list("abc"))
    s = spec_scores([noisy, good], te, OT_METHOD)
    assert s[1] < s[0]
    assert np.all((0 <= s) & (s <= 1))
    assert spec_scores([noisy, good], te, "gmm-agreement")[1] < spec_scores([noisy, good], te, "gmm-agreement")[0]
    # From the data alone the two cannot be told apart.
    plain = spec_scores([noisy, good], te, "gmm")
    assert plain[0] == pytest.approx(plain[1])


def _gram(rng, P):
    m = rng.normal(size=(P, 3 * P))
    return m @ m.T / (3 * P)


def test_index_scores_teachers_of_different_sizes_like_one_at_a_time():
    rng = np.random.default_rng(2)
    P = 6
    target = TargetEmbedding(_unit(rng.normal(size=(5, 24))), list("abcde"),
                             probe_cos=rng.uniform(-0.2, 0.9, size=(5, P)).astype(np.float32),
                             probe_cover=np.ones(5, np.float32))
    specs = [_spec(f"t{i}", rng.normal(size=(k, 24)), rng.uniform(0.3, 1, k), gram=_gram(rng, P))
             for i, k in enumerate([2, 7, 1, 4])]
    index = SpecIndex.build(specs)
    for method in SCORE_METHODS:
        together = index.scores(target, method)
        alone = [SpecIndex.build([s]).scores(target, method)[0] for s in specs]
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
        assert len(set(together.round(6))) > 1, method  # the teachers are told apart


def test_specification_round_trips_and_refuses_garbage():
    rng = np.random.default_rng(1)
    spec = _spec("t", rng.normal(size=(5, 16)), [0.9, 0.8, 0.7, 0.6, 0.5], gram=_gram(rng, 4))
    data = spec.to_bytes()
    back = Specification.from_bytes(data)
    np.testing.assert_array_equal(back.probe_gram, spec.probe_gram)
    assert back.labels == spec.labels and back.teacher_id == "t" and back.version == SPEC_VERSION
    np.testing.assert_allclose(back.prototypes, spec.prototypes, atol=1e-3)
    np.testing.assert_allclose(back.self_agreement, [0.9, 0.8, 0.7, 0.6, 0.5], atol=1e-3)
    np.testing.assert_array_equal(back.conf_idx, spec.conf_idx)
    assert back.is_current("sha-t") and not back.is_current("other weights")
    for bad in [b"not a specification", data[:len(data) // 2], data.replace(f'"version": {SPEC_VERSION}'.encode(), b'"version": 1'),
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
    run, info = shortlist_plan(candidates, SpecIndex.build(specs), TargetEmbedding(target, list("abc")), k=2,
                               method=OT_METHOD)
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
    # exhaustive_max=0: shortlist even this small repository. Ordered by OT, the shortlist emulates OT.
    ranking = rank(footwear_target, quick_repo, metrics=["ot"], shortlist_k=1, embedder=embedder, exhaustive_max=0)
    assert [e.teacher_id for e in ranking.entries] == ["fashion-footwear"]
    info = ranking.to_dict()["shortlist"]
    assert info["mode"] == "shortlist" and info["considered"] == len(quick_repo) and info["kept"] == 1
    assert info["shortlisted"] == ["fashion-footwear"] and info["not_run_count"] == len(quick_repo) - 1
    # Every skipped teacher is listed with its numbers; the ImageNet teacher is among them because its probe
    # specification does cover these grey images (and scores them far worse).
    skipped = {s["teacher_id"]: s for s in info["skipped"]}
    assert set(skipped) == set(info["not_run"]) and info["skip_reason"] and info["rank_all"] == {"shortlist": 0}
    assert skipped["imagenet-efficientnet-lite0"]["coverage"] == 1.0
    assert all(s["lower_bound"] > info["bound"] for s in info["skipped"])
    # A repository this small is ranked exhaustively by default, and says so.
    default = rank(footwear_target, quick_repo, shortlist_k=10, embedder=embedder).to_dict()
    assert len(quick_repo) <= EXHAUSTIVE_MAX_TEACHERS
    assert default["shortlist"]["mode"] == "exhaustive" and len(default["teachers"]) == len(quick_repo)
    assert default["shortlist"]["not_run"] == []


def test_the_default_shortlist_keeps_the_exact_h_score_best(quick_repo, footwear_target, embedder):
    """A default ranking orders by H-score, so its shortlist emulates H-score (each teacher's probe geometry): the
    teacher the exhaustive ranking puts first survives a shortlist of one, where the OT emulation keeps the
    footwear specialist instead."""
    ensure_specifications(quick_repo, embedder)
    exhaustive = rank(footwear_target, quick_repo)
    assert exhaustive.metrics[0] == DEFAULT_METRIC
    best = exhaustive.entries[0].teacher_id
    short = rank(footwear_target, quick_repo, shortlist_k=1, embedder=embedder, exhaustive_max=0)
    info = short.to_dict()["shortlist"]
    assert DEFAULT_METHOD == method_for(DEFAULT_METRIC) == "probe-hscore"
    assert info["method"] == f"specification:{DEFAULT_METHOD}" and info["shortlisted"] == [best]
    assert short.entries[0].teacher_id == best
    assert [e.teacher_id for e in short.entries] == [e.teacher_id for e in exhaustive.entries
                                                     if e.teacher_id in set(info["teacher_ids"])]
    by_ot = rank(footwear_target, quick_repo, metrics=["ot"], shortlist_k=1, embedder=embedder, exhaustive_max=0)
    assert by_ot.to_dict()["shortlist"]["method"] == f"specification:{OT_METHOD}"
    assert by_ot.entries[0].teacher_id == "fashion-footwear" != best


def test_probe_gram_holds_the_teacher_s_h_score_on_the_probe_set(quick_repo):
    """The probe geometry is H-score's own quantity: its class-weighted diagonal is the teacher's H-score on the
    probe set, and it is bounded by P·I (the bound the score's normalisation rests on)."""
    from hubscout.scores import hscore
    from hubscout.spec import teacher_view

    labels = probe_labels()
    P, N = int(labels.max()) + 1, len(labels)
    for tid in ("fashion-footwear", "imagenet-efficientnet-lite0"):
        f = teacher_view(quick_repo.get(tid), probe_images(), "cpu").features
        G = probe_gram(f, labels).astype(np.float64)
        w = np.bincount(labels) / N
        assert float(w @ np.diag(G)) * N / (N - 1) == pytest.approx(hscore(f, labels, P), rel=1e-4)
        assert np.allclose(G, G.T) and np.linalg.eigvalsh(G).max() <= P * (1 + 1e-5)


def test_the_h_score_emulation_knows_a_target_as_far_as_the_probe_set_covers_it(quick_repo, footwear_target,
                                                                              photos, embedder):
    """Grey footwear lies among the probe classes: every teacher's emulated H-score is known there. The RGB
    photos lie outside the grey probe set: nothing is known, every teacher runs whatever it scores."""
    ensure_specifications(quick_repo, embedder)
    index = SpecIndex.build([load_specification(quick_repo, t) for t in quick_repo.ids()])
    grey, colour = embed_target(footwear_target, embedder), embed_target(photos, embedder)
    assert np.all(grey.probe_cover >= COVERAGE_RATIO) and np.all(colour.probe_cover < COVERAGE_RATIO)
    assert knowledge(index, grey, "probe-hscore")[0].tolist() == [1.0] * len(index)
    assert knowledge(index, colour, "probe-hscore")[0].tolist() == [0.0] * len(index)
    assert len(shortlist(index, colour, k=1).teacher_ids) == len(index)
    s = index.scores(grey, "probe-hscore")
    assert np.all((0 <= s) & (s <= 1)) and len(set(s.round(6))) == len(index)
    back = TargetEmbedding.from_bytes(grey.to_bytes())
    np.testing.assert_array_equal(back.probe_cos, grey.probe_cos)
    np.testing.assert_array_equal(back.probe_cover, grey.probe_cover)


@pytest.fixture(scope="module")
def photos():
    from hubscout.sources import photo_target

    return photo_target(10, seed=0)


def test_a_photo_target_gets_the_imagenet_teacher_first_even_from_a_shortlist(quick_repo, photos, embedder):
    """The ImageNet teacher's specification comes from the grey probe set, which covers none of these photos: it
    cannot rule the teacher out, so the teacher runs exactly however it scores, and comes first."""
    ensure_specifications(quick_repo, embedder)
    exhaustive = rank(photos, quick_repo)
    assert exhaustive.entries[0].teacher_id == "imagenet-efficientnet-lite0"
    for k in (1, 3):
        r = rank(photos, quick_repo, shortlist_k=k, embedder=embedder, exhaustive_max=0)
        assert [e.teacher_id for e in r.entries] == [e.teacher_id for e in exhaustive.entries
                                                     if e.teacher_id in {x.teacher_id for x in r.entries}]
        assert r.entries[0].teacher_id == "imagenet-efficientnet-lite0"
        assert r.shortlist["coverage"]["imagenet-efficientnet-lite0"] == 0.0
    # With the defaults (a repository this small: exhaustive) the same order as the exhaustive ranking.
    default = rank(photos, quick_repo, shortlist_k=10, embedder=embedder)
    assert [e.teacher_id for e in default.entries] == [e.teacher_id for e in exhaustive.entries]


def test_coverage_compares_a_target_class_with_the_described_class_s_own_images():
    rng = np.random.default_rng(5)
    centres = _unit(rng.normal(size=(3, 64)))

    def cloud(c, n, noise):
        return _unit(c[None] + noise * rng.normal(size=(n, 64)))

    own = np.concatenate([cloud(c, 50, 0.08) for c in centres])
    onehot = np.repeat(np.eye(3), 50, axis=0)
    protos, mass, spread = class_statistics(own, onehot)
    assert np.all(spread < 1) and np.allclose(spread, (own * protos[np.repeat(np.arange(3), 50)]).sum(1)
                                              .reshape(3, 50).mean(1), atol=1e-5)
    spec = dataclasses_replace(_spec("t", protos), spread=spread)
    index = SpecIndex.build([spec, dataclasses_replace(spec, teacher_id="p", source=PROBE_SOURCE)])

    def target(clouds):
        emb = np.concatenate(clouds)
        labels = np.repeat(np.arange(len(clouds)), [len(c) for c in clouds])
        p, _, sp = class_statistics(emb, np.eye(len(clouds))[labels])
        return TargetEmbedding(p, [str(i) for i in range(len(clouds))], spread=sp)

    same = target([cloud(centres[0], 10, 0.08), cloud(centres[2], 10, 0.08)])
    half = target([cloud(centres[1], 10, 0.08), cloud(_unit(rng.normal(size=(1, 64)))[0], 10, 0.08)])
    assert index.coverage(same).tolist() == [1.0, 1.0]
    assert index.coverage(half).tolist() == [0.5, 0.5]
    # A looser target class (more scattered images) near the prototypes is still covered by the ratio's
    # calibration only as far as its images really are as close as the spec's own.
    loose = target([cloud(centres[0], 10, 0.5)])
    ratio = float(loose.spread[0] * (loose.prototypes[0] @ protos[0]) / spread[0])
    assert index.coverage(loose)[0] == float(ratio >= COVERAGE_RATIO)


def test_a_probe_specification_that_does_not_cover_the_target_cannot_rule_its_teacher_out():
    rng = np.random.default_rng(6)
    target = _unit(rng.normal(size=(3, 32)))
    te = TargetEmbedding(target, list("abc"))
    good = _spec("good", target + 0.05 * rng.normal(size=(3, 32)))
    far = _spec("far", rng.normal(size=(5, 32)))
    for source, kept in (("training-sample", ["good"]), (PROBE_SOURCE, ["good", "far"])):
        index = SpecIndex.build([good, dataclasses_replace(far, source=source)])
        short = shortlist(index, te, k=1, method=OT_METHOD)
        assert short.teacher_ids == kept, source
        assert short.coverage["good"] == 1.0
        if source == PROBE_SOURCE:
            assert short.to_dict()["uncertain_run"] == ["far"] and short.coverage["far"] == 0.0
        else:
            assert [s["teacher_id"] for s in short.skipped] == ["far"] and short.skipped[0]["coverage"] == 0.0


def test_where_no_teacher_s_training_data_covers_the_target_no_specification_rules_a_teacher_out():
    rng = np.random.default_rng(7)
    target = _unit(rng.normal(size=(3, 32)))
    te = TargetEmbedding(target, list("abc"))
    half = np.concatenate([target[:1] + 0.05 * rng.normal(size=(1, 32)), rng.normal(size=(2, 32))])
    specs = [_spec("half", half)] + [_spec(f"far{i}", rng.normal(size=(4, 32))) for i in range(4)]
    known, cov = knowledge(SpecIndex.build(specs), te, OT_METHOD)
    # Class a lies in "half"'s training data, b and c in nobody's: every teacher is known on a alone.
    assert cov.tolist() == [1 / 3, 0, 0, 0, 0] and np.allclose(known, 1 / 3)
    assert not shortlist(specs, te, k=1, method=OT_METHOD).skipped


def test_run_mask_keeps_every_teacher_whose_interval_reaches_the_kth_best():
    scores = np.array([0.10, 0.12, 0.15, 0.30, 0.50])
    known = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    keep, lo, bar = run_mask(scores, known, k=1, tolerance=0.02)
    assert bar == pytest.approx(0.12)  # the best's upper bound
    assert keep.tolist() == [True, True, False, False, True]  # 0.12 - 0.02 ≤ 0.12; unknown: lower bound 0
    keep, _, _ = run_mask(scores, known, k=2, tolerance=0.0)
    assert keep.tolist() == [True, True, False, False, True]
    keep, _, _ = run_mask(scores, np.ones(5), k=2, tolerance=0.0)
    assert keep.tolist() == [True, True, False, False, False]


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
