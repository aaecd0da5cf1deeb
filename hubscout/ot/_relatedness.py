"""The OT relatedness of a teacher to a target: the transport cost of its predictions onto the target labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubscout.ot._sinkhorn import sinkhorn_log
from hubscout.ot._validation import _as_labels, _as_matrix, _as_probs, _class_counts, _class_sums


@dataclass
class OTResult:
    """Outcome of an OT relatedness computation.

    score: transport cost (lower = better teacher); plan: (K, C) coupling summing to 1; cost_matrix: the (K, C)
    ground cost used.
    """

    score: float
    plan: np.ndarray
    cost_matrix: np.ndarray


def _check_cost(M, K: int, C: int) -> np.ndarray:
    M = _as_matrix(M, "M")
    if M.shape != (K, C):
        raise ValueError(f"cost matrix must have shape (K, C) = ({K}, {C}), got {M.shape}")
    return M


def ot_relatedness(probs, labels, n_classes: int, M) -> OTResult:
    r"""Class-balanced cost of transporting the teacher's predictions onto the target labels.

    For sample i the teacher predicts :math:`p_i` over its K classes and the target is the Dirac
    :math:`\delta_{y_i}`. The only coupling with marginals :math:`(p_i, \delta_{y_i})` is
    :math:`p_i \otimes \delta_{y_i}`, so the exact OT cost (``ot.emd2(p_i, onehot(y_i), M)``) is closed form:
    :math:`\mathrm{cost}_i = \sum_k p_{ik} M_{k y_i}`. The entropic OT has the same unique plan, so its
    transport cost :math:`\langle P, M\rangle` is the same number (the entropy term is a constant, H(p_i), and
    is not part of the score). No Sinkhorn is needed, which is what makes scoring 1,000 teachers cheap.

    Score: the mean of cost_i within each target class, then the mean over the classes that have samples, so a
    frequent class does not dominate. Plan: the same class-balanced average of the per-sample couplings, i.e.
    :math:`P_{kc} = \frac{1}{|\mathcal{C}|} \frac{1}{n_c} \sum_{i: y_i = c} p_{ik}` (the class-balanced
    empirical joint of teacher class and target class); it sums to 1 and :math:`\mathrm{score} = \langle P, M\rangle`.

    Reference: Lu, Ye & Zhan, arXiv 2204.11526 (OT between teacher and student predictions as relatedness).

    Parameters: probs (N, K) teacher softmax on the target samples, labels (N,) in [0, n_classes), M (K, C).
    """
    p = _as_probs(probs)
    y = _as_labels(labels, n_classes, p.shape[0])
    M = _check_cost(M, p.shape[1], n_classes)
    counts = _class_counts(y, n_classes)
    present = counts > 0
    plan = _class_sums(p, y, n_classes).T  # (K, C) per-class sums of predictions
    plan[:, present] /= counts[present] * present.sum()
    plan /= plan.sum()  # already 1 up to rounding; keep it exact for consumers that rely on it
    score = float(np.sum(plan * M))
    return OTResult(score=score, plan=plan, cost_matrix=M)


def ot_dataset_sinkhorn(probs, labels, n_classes: int, M, reg: float = 0.05) -> OTResult:
    r"""Entropic OT between the teacher's mean predicted class marginal and the target label marginal.

    :math:`a = \frac1N \sum_i p_i` (K,), :math:`b_c = n_c / N` (C,), P = Sinkhorn plan (:func:`sinkhorn_log`),
    score :math:`\langle P, M\rangle`. It only compares marginals, so it cannot tell which samples the teacher
    maps where; kept as a comparison point for :func:`ot_relatedness`.
    """
    p = _as_probs(probs)
    y = _as_labels(labels, n_classes, p.shape[0])
    M = _check_cost(M, p.shape[1], n_classes)
    a = p.mean(axis=0)
    a /= a.sum()
    b = _class_counts(y, n_classes) / y.size
    P = sinkhorn_log(a, b, M, reg)
    return OTResult(score=float(np.sum(P * M)), plan=P, cost_matrix=M)
