"""Tests for hubscout.ot against POT's exact and entropic solvers and hand-computed examples."""

import math

import numpy as np
import ot as pot
import pytest
import torch

from hubscout.ot import (
    COSTS,
    OTResult,
    cost_joint,
    cost_matrix,
    cost_prototype,
    cost_prototype_softmax,
    ot_dataset_sinkhorn,
    ot_relatedness,
    plan_summary,
    sinkhorn_log,
    sinkhorn_log_torch,
    nearest_classes,
    top_correspondences,
)


def _hist(rng, n, zeros=()):
    h = rng.random(n) + 0.05
    h[list(zeros)] = 0.0
    return h / h.sum()


# ---------------------------------------------------------------------------------------------------- sinkhorn_log


@pytest.mark.parametrize("reg", [0.05, 0.2, 1.0])
def test_sinkhorn_log_matches_pot(reg):
    rng = np.random.default_rng(0)
    a, b, M = _hist(rng, 6), _hist(rng, 4), rng.random((6, 4))
    P = sinkhorn_log(a, b, M, reg, n_iter=5000, tol=1e-13)
    P_pot = pot.sinkhorn(a, b, M, reg, numItermax=5000, stopThr=1e-13)
    np.testing.assert_allclose(P, P_pot, atol=1e-10)
    np.testing.assert_allclose(P.sum(axis=1), a, atol=1e-12)
    np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-10)
    assert np.sum(P * M) == pytest.approx(float(pot.sinkhorn2(a, b, M, reg, numItermax=5000, stopThr=1e-13)),
                                          abs=1e-10)


def test_sinkhorn_log_same_iterates_as_pot_before_convergence():
    # Same update order as POT: after 3 iterations (far from converged) the plans must coincide exactly.
    rng = np.random.default_rng(1)
    a, b, M = _hist(rng, 5), _hist(rng, 3), rng.random((5, 3))
    P = sinkhorn_log(a, b, M, 0.3, n_iter=3, tol=0.0)
    with pytest.warns(UserWarning):
        P_pot = pot.bregman.sinkhorn_knopp(a, b, M, 0.3, numItermax=3, stopThr=0.0)
    assert np.abs(P.sum(axis=0) - b).sum() > 1e-6  # genuinely unconverged, so the comparison means something
    np.testing.assert_allclose(P, P_pot, atol=1e-13)


def test_sinkhorn_log_zero_mass_and_small_reg():
    # reg = 1e-3 underflows exp(-M/reg) in the plain algorithm; zero-mass bins must stay empty.
    rng = np.random.default_rng(2)
    a, b, M = _hist(rng, 6, zeros=[1]), _hist(rng, 5, zeros=[0, 3]), rng.random((6, 5))
    P = sinkhorn_log(a, b, M, 1e-3, n_iter=20000, tol=1e-12)
    assert np.all(np.isfinite(P))
    assert np.all(P[1] == 0) and np.all(P[:, [0, 3]] == 0)
    np.testing.assert_allclose(P.sum(axis=1), a, atol=1e-12)
    np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-9)


def test_sinkhorn_log_tends_to_emd():
    rng = np.random.default_rng(3)
    a, b, M = _hist(rng, 5), _hist(rng, 4), rng.random((5, 4))
    P_emd = pot.emd(a, b, M)
    exact = float(pot.emd2(a, b, M))
    gaps, dists = [], []
    for reg in [0.1, 0.01, 0.001]:
        P = sinkhorn_log(a, b, M, reg, n_iter=50000, tol=1e-12)
        gaps.append(np.sum(P * M) - exact)
        dists.append(np.abs(P - P_emd).sum())
    assert all(g >= -1e-9 for g in gaps)  # the exact plan is optimal, entropic plans can only cost more
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 5e-3 and dists[2] < 2e-2


def test_sinkhorn_log_rejects_unbalanced_and_bad_shapes():
    a, b = np.array([0.5, 0.5]), np.array([0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="mass"):
        sinkhorn_log(a, b, np.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match="shape"):
        sinkhorn_log(a, b / b.sum(), np.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError, match="reg"):
        sinkhorn_log(a, np.array([0.5, 0.5]), np.zeros((2, 2)), 0.0)


# ---------------------------------------------------------------------------------------------- sinkhorn_log_torch


def test_sinkhorn_torch_matches_pot_per_sample():
    torch.manual_seed(0)
    B, K, C, reg = 4, 6, 3, 0.1
    log_a = torch.log_softmax(torch.randn(B, K, dtype=torch.float64) * 2, dim=1)
    log_b = torch.log_softmax(torch.randn(B, C, dtype=torch.float64) * 2, dim=1)
    M = torch.rand(K, C, dtype=torch.float64)
    out = sinkhorn_log_torch(log_a, log_b, M, reg, n_iter=2000)
    assert out.shape == (B,)
    for i in range(B):
        expected = float(pot.sinkhorn2(log_a[i].exp().numpy(), log_b[i].exp().numpy(), M.numpy(), reg,
                                       numItermax=5000, stopThr=1e-14))
        assert float(out[i]) == pytest.approx(expected, abs=1e-9)


def test_sinkhorn_torch_agrees_with_numpy_after_few_iterations():
    # Same iterations as the numpy solver, so equal even unconverged (n_iter=5), batched or not.
    rng = np.random.default_rng(4)
    a, b, M = _hist(rng, 7), _hist(rng, 4), rng.random((7, 4))
    P = sinkhorn_log(a, b, M, 0.05, n_iter=5, tol=0.0)
    la = torch.tensor(np.log(a))[None].repeat(2, 1)
    lb = torch.tensor(np.log(b))[None].repeat(2, 1)
    out = sinkhorn_log_torch(la, lb, torch.tensor(M), 0.05, n_iter=5)
    np.testing.assert_allclose(out.numpy(), [np.sum(P * M)] * 2, atol=1e-12)


def test_sinkhorn_torch_gradcheck():
    torch.manual_seed(1)
    log_a = torch.log_softmax(torch.randn(2, 3, dtype=torch.float64), dim=1).requires_grad_()
    log_b = torch.log_softmax(torch.randn(2, 4, dtype=torch.float64), dim=1).requires_grad_()
    M = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, m: sinkhorn_log_torch(x, y, m, 0.2, n_iter=30),
                                    (log_a, log_b, M), eps=1e-6, atol=1e-6)


def test_sinkhorn_torch_gradient_points_downhill():
    # A student whose prediction moves towards the cheap target class must lower the loss.
    M = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    log_a = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    loss = sinkhorn_log_torch(log_a, torch.log_softmax(logits, dim=1), M, 0.05, n_iter=200)
    loss.sum().backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]


def test_sinkhorn_torch_near_one_hot_is_finite():
    K, C = 10, 5
    teacher_logits = torch.full((3, K), -1e4)
    teacher_logits[:, 0] = 1e4  # one-hot after softmax: log-probs of -2e4, exp underflows to 0
    log_a = torch.log_softmax(teacher_logits, dim=1).requires_grad_()
    log_a_inf = torch.log(torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), K).float())  # contains -inf
    student_logits = torch.randn(3, C) * 1e3
    student_logits.requires_grad_()
    M = torch.rand(K, C)
    for la in (log_a, log_a_inf):
        loss = sinkhorn_log_torch(la, torch.log_softmax(student_logits, dim=1), M, 0.01, n_iter=50)
        assert torch.all(torch.isfinite(loss))
        student_logits.grad = None
        loss.sum().backward()
        assert torch.all(torch.isfinite(student_logits.grad))
    assert torch.all(torch.isfinite(log_a.grad))


def test_sinkhorn_torch_clamps_tiny_probabilities():
    # Below log(1e-12) a log-probability is floored: same loss as at the floor, and no gradient through it.
    M = torch.tensor([[0.2, 0.9], [0.6, 0.1], [0.3, 0.5]], dtype=torch.float64)
    log_b = torch.log(torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    raw = torch.tensor([[-50.0, -0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    at_floor = torch.tensor([[math.log(1e-12), -0.5, -1.0]], dtype=torch.float64)
    loss = sinkhorn_log_torch(raw, log_b, M, 0.1, n_iter=100)
    assert loss.item() == pytest.approx(sinkhorn_log_torch(at_floor, log_b, M, 0.1, n_iter=100).item(), abs=1e-14)
    loss.sum().backward()
    assert raw.grad[0, 0] == 0 and raw.grad[0, 1] != 0


def test_sinkhorn_torch_renormalises_inputs():
    # Log-weights are renormalised, so logits give the same loss as their log_softmax (balanced masses).
    torch.manual_seed(2)
    ta, sb = torch.randn(3, 5, dtype=torch.float64) * 3, torch.randn(3, 4, dtype=torch.float64) * 3
    M = torch.rand(5, 4, dtype=torch.float64)
    raw = sinkhorn_log_torch(ta, sb, M, 0.1, n_iter=30)
    normed = sinkhorn_log_torch(torch.log_softmax(ta, 1), torch.log_softmax(sb, 1), M, 0.1, n_iter=30)
    torch.testing.assert_close(raw, normed, rtol=0, atol=1e-12)


def test_sinkhorn_torch_one_hot_teacher_equals_expected_cost():
    # With a Dirac teacher the only coupling is delta_k x b, so the loss is sum_c b_c M[k, c] for any reg.
    M = torch.tensor([[0.1, 0.7, 0.4], [0.9, 0.2, 0.5]], dtype=torch.float64)
    b = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    log_a = torch.log(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    out = sinkhorn_log_torch(log_a, b.log(), M, 0.1, n_iter=100)
    assert float(out) == pytest.approx(0.2 * 0.9 + 0.5 * 0.2 + 0.3 * 0.5, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------- costs


def test_cost_prototype_hand_example():
    W = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # K=3, D=2
    feats = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0], [0.0, 1.0], [3.0, 3.0]])
    labels = np.array([0, 0, 1, 1, 2])
    M = cost_prototype(W, feats, labels, 3)
    # prototypes: class0 -> (1,0), class1 -> (0,1), class2 -> (1,1)/sqrt2
    r = 1 / math.sqrt(2)
    cos = np.array([[1, 0, r], [0, 1, r], [r, r, 1]])
    np.testing.assert_allclose(M, (1 - cos) / 2, atol=1e-12)


def test_cost_prototype_centred_hand_example_and_offset_invariance():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = np.array([[3.0, 1.0], [5.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    # prototypes (4,1) and (1,1); class-balanced centre (2.5,1) -> centred (1.5,0) and (-1.5,0)
    M = cost_prototype(W, feats, labels, 2, centre=True)
    np.testing.assert_allclose(M, [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], atol=1e-12)
    # A shift shared by every target image (a domain offset) changes the raw cost but not the centred one.
    shifted = feats + np.array([50.0, -20.0])
    np.testing.assert_allclose(cost_prototype(W, shifted, labels, 2, centre=True), M, atol=1e-12)
    assert not np.allclose(cost_prototype(W, shifted, labels, 2), cost_prototype(W, feats, labels, 2))
    # Class balance: repeating class 0's samples does not move the centre.
    heavy = np.concatenate([feats, feats[:2], feats[:2]])
    np.testing.assert_allclose(cost_prototype(W, heavy, np.concatenate([labels, [0, 0, 0, 0]]), 2, centre=True), M,
                               atol=1e-12)
    np.testing.assert_allclose(
        cost_matrix("proto-softmax-centred", classifier_weight=W, features=shifted, labels=labels, n_classes=2),
        cost_prototype_softmax(W, feats, labels, 2, centre=True), atol=1e-12)


def test_cost_prototype_softmax_hand_example():
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    labels = np.array([0, 1, 1])
    M = cost_prototype_softmax(W, feats, labels, 2, temperature=0.5)
    # cos = identity; q(c=k|k) = e^2 / (e^2 + 1); the off-diagonal cost -log(1/(e^2+1))/log2 > 1 is clipped.
    diag = -math.log(math.exp(2) / (math.exp(2) + 1)) / math.log(2)
    np.testing.assert_allclose(M, [[diag, 1.0], [1.0, diag]], atol=1e-12)


def test_cost_joint_hand_example():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    alpha = 0.1
    M = cost_joint(probs, labels, 2, alpha=alpha)
    # J = [[1.4, 0.4], [0.6, 1.6]] / 4 (rows: teacher classes)
    J = np.array([[0.35, 0.10], [0.15, 0.40]])
    cond = (J + alpha / 2) / (J.sum(axis=1, keepdims=True) + alpha)
    np.testing.assert_allclose(M, 1 - cond, atol=1e-12)
    assert M[0, 0] == pytest.approx(1 - (0.35 + 0.05) / (0.45 + 0.1))


@pytest.mark.parametrize("name", sorted(COSTS))
def test_costs_shape_and_range(name):
    rng = np.random.default_rng(5)
    K, C, N, D = 30, 6, 200, 16
    W, feats = rng.normal(size=(K, D)), rng.normal(size=(N, D))
    probs = rng.dirichlet(np.ones(K), size=N)
    labels = rng.integers(0, C - 1, size=N)  # class C-1 has no samples: must still be well defined
    M = cost_matrix(name, classifier_weight=W, features=feats, probs=probs, labels=labels, n_classes=C)
    assert M.shape == (K, C) and M.dtype == np.float64
    assert np.all(np.isfinite(M)) and M.min() >= 0 and M.max() <= 1
    assert M.std() > 0


def test_cost_matrix_dispatch_and_errors():
    rng = np.random.default_rng(6)
    W, feats, labels = rng.normal(size=(4, 3)), rng.normal(size=(10, 3)), np.arange(10) % 2
    np.testing.assert_array_equal(
        cost_matrix("proto-softmax", classifier_weight=W, features=feats, labels=labels, n_classes=2, temperature=1.0),
        cost_prototype_softmax(W, feats, labels, 2, temperature=1.0))
    with pytest.raises(ValueError, match="unknown cost"):
        cost_matrix("nope", labels=labels, n_classes=2)
    with pytest.raises(ValueError, match="probs"):
        cost_matrix("joint", classifier_weight=W, features=feats, labels=labels, n_classes=2)
    with pytest.raises(ValueError, match="features"):
        cost_matrix("proto", classifier_weight=W, labels=labels, n_classes=2)
    with pytest.raises(ValueError, match="disagree on D"):
        cost_prototype(W, feats[:, :2], labels, 2)


def _collapse_example():
    """Teacher A maps both target classes onto teacher class 0; teacher B separates them."""
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    feats_a = np.array([[1.0, 0.0], [2.0, 0.1], [1.5, -0.1], [1.0, 0.05], [2.0, -0.05], [1.2, 0.0]])
    probs_a = np.tile([0.99, 0.01], (6, 1))
    feats_b = np.array([[1.0, 0.0], [2.0, 0.1], [1.5, -0.1], [0.0, 1.0], [0.1, 2.0], [-0.1, 1.5]])
    probs_b = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3)
    return W, labels, (feats_a, probs_a), (feats_b, probs_b)


def test_proto_softmax_penalises_collapse_where_proto_does_not():
    W, labels, (fa, pa), (fb, pb) = _collapse_example()

    def score(cost, feats, probs):
        return ot_relatedness(probs, labels, 2, cost(W, feats, labels, 2)).score

    # The plain prototype cost is fooled: the collapsed teacher A looks better than B.
    assert score(cost_prototype, fa, pa) < score(cost_prototype, fb, pb)
    # The discriminative cost sees that A's prototypes are identical (cost 1 everywhere).
    assert score(cost_prototype_softmax, fa, pa) > 0.95
    assert score(cost_prototype_softmax, fb, pb) < 0.2


# ------------------------------------------------------------------------------------------------- ot_relatedness


def test_ot_relatedness_matches_per_sample_emd_class_balanced():
    rng = np.random.default_rng(7)
    N, K, C = 13, 5, 3
    probs = rng.dirichlet(np.ones(K), size=N)
    labels = np.array([0] * 7 + [1] * 4 + [2] * 2)
    M = rng.random((K, C))
    res = ot_relatedness(probs, labels, C, M)
    per_sample = np.array([pot.emd2(probs[i], np.eye(C)[labels[i]], M) for i in range(N)])
    expected = np.mean([per_sample[labels == c].mean() for c in range(C)])
    assert isinstance(res, OTResult)
    assert res.score == pytest.approx(expected, abs=1e-12)
    # class balancing matters here (7/4/2 split), so the plain sample mean must differ
    assert abs(per_sample.mean() - expected) > 1e-4
    assert res.plan.shape == (K, C) and res.plan.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(res.plan.sum(axis=0), [1 / 3] * 3, atol=1e-12)
    assert np.sum(res.plan * M) == pytest.approx(res.score, abs=1e-12)
    # the plan is the class-balanced mean of the per-sample exact couplings
    plan = sum(pot.emd(probs[i], np.eye(C)[labels[i]], M) / (labels == labels[i]).sum() / C for i in range(N))
    np.testing.assert_allclose(res.plan, plan, atol=1e-12)
    np.testing.assert_array_equal(res.cost_matrix, M)


def test_ot_relatedness_hand_example_and_missing_class():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    labels = np.array([0, 0, 2])  # class 1 absent: excluded from the class average
    M = np.array([[0.0, 1.0, 0.6], [0.4, 1.0, 0.2]])
    res = ot_relatedness(probs, labels, 3, M)
    class0 = (1.0 * 0.0 + (0.5 * 0.0 + 0.5 * 0.4)) / 2  # 0.1
    class2 = 0.2
    assert res.score == pytest.approx((class0 + class2) / 2)
    np.testing.assert_allclose(res.plan, [[0.375, 0.0, 0.0], [0.125, 0.0, 0.5]], atol=1e-12)


def test_ot_relatedness_entropic_equals_exact_for_dirac_target():
    # The docstring's claim: with a Dirac target the entropic plan is the same, so is its transport cost.
    rng = np.random.default_rng(8)
    p, M = _hist(rng, 6), rng.random((6, 3))
    onehot = np.array([0.0, 1.0, 0.0])
    res = ot_relatedness(p[None], np.array([1]), 3, M)
    assert res.score == pytest.approx(float(pot.sinkhorn2(p, onehot, M, 0.5)), abs=1e-9)


def test_ot_dataset_sinkhorn_matches_pot():
    rng = np.random.default_rng(9)
    N, K, C = 40, 8, 4
    probs = rng.dirichlet(np.ones(K), size=N)
    labels = rng.integers(0, C, size=N)
    M = rng.random((K, C))
    res = ot_dataset_sinkhorn(probs, labels, C, M, reg=0.05)
    a, b = probs.mean(axis=0), np.bincount(labels, minlength=C) / N
    assert res.score == pytest.approx(float(pot.sinkhorn2(a, b, M, 0.05, numItermax=10000, stopThr=1e-12)),
                                      abs=1e-7)
    assert res.plan.sum() == pytest.approx(1.0, abs=1e-9)


def test_ot_relatedness_validation():
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    M = np.zeros((2, 2))
    with pytest.raises(ValueError, match="labels must lie"):
        ot_relatedness(probs, np.array([0, 2]), 2, M)
    with pytest.raises(ValueError, match="rows"):
        ot_relatedness(probs, np.array([0, 1, 1]), 2, M)
    with pytest.raises(ValueError, match="shape"):
        ot_relatedness(probs, np.array([0, 1]), 2, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="logits"):
        ot_relatedness(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]), 2, M)
    with pytest.raises(ValueError, match="NaN"):
        ot_relatedness(np.array([[np.nan, 1.0], [0.5, 0.5]]), np.array([0, 1]), 2, M)


def test_large_shapes_are_fast_enough():
    rng = np.random.default_rng(10)
    N, K, C, D = 3000, 1000, 60, 64
    probs = rng.dirichlet(np.full(K, 0.05), size=N)
    labels = rng.integers(0, C, size=N)
    M = cost_prototype_softmax(rng.normal(size=(K, D)), rng.normal(size=(N, D)), labels, C)
    res = ot_relatedness(probs, labels, C, M)
    assert res.plan.shape == (K, C) and 0 <= res.score <= 1
    assert ot_dataset_sinkhorn(probs, labels, C, M).plan.shape == (K, C)


# ----------------------------------------------------------------------------------------------- correspondences


def test_top_correspondences():
    plan = np.array([[0.10, 0.00], [0.30, 0.05], [0.05, 0.15], [0.05, 0.00]])
    out = top_correspondences(plan, ["t0", "t1", "t2", "t3"], ["cat", "dog"], k=2)
    assert [n for n, _ in out["cat"]] == ["t1", "t0"]
    assert out["cat"][0][1] == pytest.approx(0.6) and out["cat"][1][1] == pytest.approx(0.2)
    assert [n for n, _ in out["dog"]] == ["t2", "t1"]
    assert out["dog"][0][1] == pytest.approx(0.75)
    assert top_correspondences(np.zeros((2, 1)), ["a", "b"], ["x"]) == {"x": []}
    with pytest.raises(ValueError):
        top_correspondences(plan, ["t0"], ["cat", "dog"])


def test_nearest_classes():
    M = np.array([[0.9, 0.2], [0.1, 0.3], [0.5, 0.25]])
    out = nearest_classes(M, ["t0", "t1", "t2"], ["cat", "dog"], k=2)
    assert out == {"cat": [("t1", 0.1), ("t2", 0.5)], "dog": [("t0", 0.2), ("t2", 0.25)]}
    assert len(nearest_classes(M, ["t0", "t1", "t2"], ["cat", "dog"], k=10)["cat"]) == 3
    with pytest.raises(ValueError):
        nearest_classes(M, ["t0"], ["cat", "dog"])


def test_plan_summary_of_a_small_plan_keeps_every_class_as_column_shares():
    plan = np.array([[0.10, 0.00], [0.30, 0.05], [0.05, 0.15], [0.05, 0.00]])
    s = plan_summary(plan, ["t0", "t1", "t2", "t3"], ["cat", "dog"])
    assert s["teacher_classes"] == ["t0", "t1", "t2", "t3"] and s["teacher_index"] == [0, 1, 2, 3]
    assert s["target_classes"] == ["cat", "dog"] and not s["truncated"]
    np.testing.assert_allclose(s["share"], [[0.2, 0.0], [0.6, 0.25], [0.1, 0.75], [0.1, 0.0]], atol=1e-4)
    assert s["kept_share"] == [1.0, 1.0]
    assert (s["teacher_num_classes"], s["target_num_classes"]) == (4, 2)
    # Shares agree with the correspondences read from the same plan.
    assert s["share"][2][1] == pytest.approx(top_correspondences(plan, list("abcd"), ["x", "y"])["y"][0][1], abs=1e-4)
    with pytest.raises(ValueError):
        plan_summary(plan, ["t0"], ["cat", "dog"])


def test_plan_summary_of_a_large_teacher_keeps_the_heaviest_classes_in_blocks():
    rng = np.random.default_rng(0)
    K, C = 1000, 3
    plan = rng.random((K, C)) * 1e-4
    heavy = {0: [917, 12], 1: [500], 2: [3, 640, 999]}  # the classes each target column mostly draws from
    for c, rows in heavy.items():
        plan[rows, c] += 0.2
    plan /= plan.sum()
    labels = [f"class-{k}" for k in range(K)]
    s = plan_summary(plan, labels, ["a", "b", "c"], max_teacher_classes=10)
    assert s["truncated"] and len(s["teacher_classes"]) == 10 and s["teacher_num_classes"] == 1000
    kept = s["teacher_index"]
    assert {r for rows in heavy.values() for r in rows} <= set(kept)
    assert [labels[i] for i in kept] == s["teacher_classes"]
    # Ordered by favourite target column: the heavy rows of column a come before b's, b's before c's.
    pos = {r: kept.index(r) for rows in heavy.values() for r in rows}
    assert max(pos[r] for r in heavy[0]) < pos[500] < min(pos[r] for r in heavy[2])
    full = plan / plan.sum(axis=0)
    np.testing.assert_allclose(s["share"], full[kept], atol=1e-4)
    np.testing.assert_allclose(s["kept_share"], full[kept].sum(axis=0), atol=1e-3)
    assert all(0.5 < x < 1.0 for x in s["kept_share"])


def test_plan_summary_cuts_many_target_classes():
    plan = np.full((4, 100), 1 / 400)
    s = plan_summary(plan, list("abcd"), [f"c{j}" for j in range(100)], max_target_classes=60)
    assert s["target_classes"] == [f"c{j}" for j in range(60)] and s["target_num_classes"] == 100
    assert s["truncated"] and np.asarray(s["share"]).shape == (4, 60)


def test_feature_transport_candidates_separate_from_mixed_and_ignore_scale():
    """The ranking-v2 candidates (benchmarks.ranking_dev): well-separated classes score higher than mixed ones,
    and a rescaled or higher-dimensional copy of the same embedding scores the same."""
    from hubscout.ot import _features as F

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    centres = 4.0 * rng.normal(size=(3, 16))
    apart = centres[y] + rng.normal(size=(24, 16))
    mixed = rng.normal(size=(24, 16))
    padded = np.concatenate([apart, np.zeros((24, 48))], axis=1)  # same geometry in 64 dimensions
    for name in ("f:loo-loglik", "f:loo-transport", "f:class-w", "f:lda-loglik", "f:lda-transport"):
        fn = F.CANDIDATES[name]
        assert fn(apart, y, 3) > fn(mixed, y, 3), name
        assert fn(10.0 * apart, y, 3) == pytest.approx(fn(apart, y, 3), rel=1e-6), name
        assert fn(padded, y, 3) == pytest.approx(fn(apart, y, 3), rel=1e-6), name
    # Perfectly separated: the transport carries (nearly) all of each sample's mass to its own label.
    assert F.loo_transport(apart, y, 3) > 0.95 and F.loo_transport(mixed, y, 3) < 0.6
