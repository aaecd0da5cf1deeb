"""Teacher specifications and the shortlist: a large repository is searched without running its teachers."""
import numpy as np
import pytest

from hubscout.rank import rank
from hubscout.spec import (ReferenceEmbedder, Specification, TargetEmbedding, ensure_specifications,
                           load_specification, shortlist, spec_scores)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _spec(tid, protos):
    return Specification(tid, "sha-" + tid, [f"{tid}-{i}" for i in range(len(protos))], _unit(protos),
                         np.full(len(protos), 1 / len(protos), np.float32))


def test_spec_scores_prefer_one_to_one_over_collapse():
    rng = np.random.default_rng(0)
    target = _unit(rng.normal(size=(4, 32)))
    matching = _spec("match", target + 0.05 * rng.normal(size=(4, 32)))
    collapsed = _spec("collapse", np.repeat(target.mean(0, keepdims=True), 3, axis=0) + 0.01 * rng.normal(size=(3, 32)))
    unrelated = _spec("far", rng.normal(size=(6, 32)))
    s = spec_scores([matching, collapsed, unrelated], TargetEmbedding(target, list("abcd")))
    assert s[0] < s[1] and s[0] < s[2]
    assert np.all((0 <= s) & (s <= 1))
    short = shortlist([unrelated, collapsed, matching], TargetEmbedding(target, list("abcd")), k=1)
    assert short.teacher_ids == ["match"] and short.considered == 3


def test_specification_round_trips_through_bytes():
    spec = _spec("t", np.random.default_rng(1).normal(size=(5, 16)))
    back = Specification.from_bytes(spec.to_bytes())
    assert back.labels == spec.labels and back.teacher_id == "t"
    np.testing.assert_allclose(back.prototypes, spec.prototypes, atol=1e-3)


@pytest.fixture(scope="module")
def embedder():
    return ReferenceEmbedder()


def test_shortlist_keeps_the_right_teacher_without_running_the_others(quick_repo, footwear_target, embedder):
    ensure_specifications(quick_repo, embedder)
    assert all(load_specification(quick_repo, t) is not None for t in quick_repo.ids())
    ranking = rank(footwear_target, quick_repo, shortlist_k=1, embedder=embedder)
    assert [e.teacher_id for e in ranking.entries] == ["fashion-footwear"]
    info = ranking.to_dict()["shortlist"]
    assert info["considered"] == len(quick_repo) and info["kept"] == 1
    assert info["teacher_ids"] == ["fashion-footwear"]
