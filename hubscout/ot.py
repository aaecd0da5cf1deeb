"""Optimal transport between a teacher's label space and a target label space.

Solvers are plain functions in the style of POT (Flamary et al., "POT: Python Optimal Transport", JMLR 2021):
numpy in, numpy out, float64 internally; one differentiable, batched torch solver is used as the distillation
loss.

The ranking idea follows Lu, Ye & Zhan, "Faculty Distillation with Optimal Transport" / "Selective Cross-Task
Distillation" (arXiv 2204.11526): the cost of transporting a teacher's predictions (over its K source classes)
onto the target labels (C classes), under a ground cost that relates the two label spaces, says how well that
teacher fits the task; lower is better.

Conventions: K = number of teacher classes (rows), C = number of target classes (columns), N = samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "sinkhorn_log",
    "sinkhorn_log_torch",
    "cost_prototype",
    "cost_prototype_softmax",
    "cost_joint",
    "COSTS",
    "cost_matrix",
    "OTResult",
    "ot_relatedness",
    "ot_dataset_sinkhorn",
    "top_correspondences",
]

# Probabilities below this are treated as this in log space: keeps log-domain Sinkhorn and its gradients finite
# for (near) one-hot predictions.
LOG_PROB_FLOOR = math.log(1e-12)


# --------------------------------------------------------------------------------------------------------------
# Validation helpers (shared with hubscout.scores)
# --------------------------------------------------------------------------------------------------------------


def _as_labels(labels, n_classes: int, n: int | None = None) -> np.ndarray:
    """Integer labels in [0, n_classes); a ValueError that says what is wrong otherwise."""
    if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but the predictions/features have {n} rows")
    if y.size == 0:
        raise ValueError("labels is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) and y.dtype != bool:
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        if not np.all(np.isfinite(y)):
            raise ValueError("labels contain NaN or inf")
        if not np.all(y == np.round(y)):
            raise ValueError("labels must be integer-valued")
    y = y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found values in [{lo}, {hi}]")
    return y


def _as_matrix(x, name: str) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {m.shape}")
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {m.shape})")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _as_probs(probs, name: str = "probs") -> np.ndarray:
    """Row-stochastic (N, K) float64 matrix.

    Rows are renormalised to absorb float32 softmax rounding; anything that is clearly not a probability vector
    (negative entries, rows far from summing to one, e.g. logits passed by mistake) is rejected.
    """
    p = _as_matrix(probs, name)
    if p.min() < 0:
        raise ValueError(f"{name} has negative entries; pass softmax probabilities, not logits")
    s = p.sum(axis=1)
    if np.any(np.abs(s - 1.0) > 1e-2):
        bad = int(np.argmax(np.abs(s - 1.0)))
        raise ValueError(f"{name} rows must sum to 1 (row {bad} sums to {s[bad]:.6g}); pass softmax probabilities")
    return p / s[:, None]


def _class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=n_classes).astype(np.float64)


def _class_sums(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, D) sums of the rows of x per label.

    A sparse (C, N) indicator times x is O(N D); a dense one-hot product would be O(N C D) and (N, C) memory.
    """
    from scipy.sparse import csr_matrix

    ind = csr_matrix((np.ones(y.size), (y, np.arange(y.size))), shape=(n_classes, y.size))
    return np.asarray(ind @ x, dtype=np.float64)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    # Hand-rolled rather than scipy.special.logsumexp: it sits in the Sinkhorn inner loop, where the generic
    # version's argument handling costs more than the arithmetic on small problems.
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


# --------------------------------------------------------------------------------------------------------------
# Sinkhorn
# --------------------------------------------------------------------------------------------------------------


def sinkhorn_log(a, b, M, reg: float, n_iter: int = 1000, tol: float = 1e-9) -> np.ndarray:
    r"""Entropic OT plan by log-domain Sinkhorn iterations.

    Solves :math:`\min_{P \in U(a,b)} \langle P, M\rangle - \mathrm{reg}\, H(P)`, with
    :math:`H(P) = -\sum_{ij} P_{ij}(\log P_{ij} - 1)`, the same problem as ``ot.sinkhorn(a, b, M, reg)``.
    The scalings are kept as dual potentials ``f, g`` and updated with log-sum-exp, so small ``reg`` does not
    underflow ``exp(-M/reg)`` (Peyré & Cuturi, "Computational Optimal Transport", 2019, Sec. 4.4; Schmitzer,
    "Stabilized sparse scaling algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 2019).

    The update order (column scaling first, then row scaling) is POT's, so after the same number of iterations
    the plans coincide with ``ot.bregman.sinkhorn_knopp`` and the row marginals are exactly ``a``.

    Parameters
    ----------
    a : (K,) source histogram (non-negative).
    b : (C,) target histogram, same total mass as ``a``.
    M : (K, C) ground cost.
    reg : entropic regularisation, > 0. As ``reg -> 0`` the plan tends to the exact (``ot.emd``) plan.
    n_iter : maximum number of iterations.
    tol : stop when the L1 violation of the column marginal falls below this.

    Returns
    -------
    (K, C) transport plan; rows/columns where ``a``/``b`` are zero are zero.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    M = _as_matrix(M, "M")
    if M.shape != (a.size, b.size):
        raise ValueError(f"M must have shape (len(a), len(b)) = ({a.size}, {b.size}), got {M.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite")
    if a.min() < 0 or b.min() < 0:
        raise ValueError("a and b must be non-negative")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    ma, mb = a.sum(), b.sum()
    if ma <= 0 or abs(ma - mb) > 1e-6 * max(ma, mb):
        raise ValueError(f"a and b must have the same positive mass, got {ma:.10g} and {mb:.10g}")

    # log(0) = -inf would poison the log-sum-exp; zero-mass rows/columns carry nothing, so solve on the support.
    ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    la, lb = np.log(a[ia]), np.log(b[ib])
    Mr = M[np.ix_(ia, ib)] / reg
    bs = b[ib]

    f = np.zeros(ia.size)  # potentials in units of reg
    g = np.zeros(ib.size)
    for it in range(n_iter):
        g = lb - _logsumexp(f[:, None] - Mr, axis=0)
        f = la - _logsumexp(g[None, :] - Mr, axis=1)
        if it % 10 == 0 or it == n_iter - 1:
            col = np.exp(f[:, None] + g[None, :] - Mr).sum(axis=0)
            if np.abs(col - bs).sum() < tol:
                break

    P = np.zeros(M.shape)
    P[np.ix_(ia, ib)] = np.exp(f[:, None] + g[None, :] - Mr)
    return P


def sinkhorn_log_torch(log_a, log_b, M, reg: float, n_iter: int = 50):
    r"""Batched, differentiable entropic OT cost :math:`\langle P_\mathrm{reg}(a_i, b_i), M\rangle` in torch.

    For each sample ``i`` of the batch, runs ``n_iter`` log-domain Sinkhorn iterations between the teacher's
    softened prediction ``a_i = exp(log_a[i])`` (over K teacher classes) and the student's prediction
    ``b_i = exp(log_b[i])`` (over C target classes), and returns the transport cost of the resulting plan
    (without the entropy term, like ``ot.sinkhorn2``). The iterations are unrolled, so autograd differentiates
    through them to ``log_b``, ``log_a`` and ``M`` (Genevay, Peyré & Cuturi, "Learning Generative Models with
    Sinkhorn Divergences", AISTATS 2018). This is the cross-task distillation loss of Lu, Ye & Zhan
    (arXiv 2204.11526).

    Log probabilities are clamped at ``log(1e-12)`` and renormalised first, so exact zeros (``-inf``, a hard
    one-hot teacher) and float32 underflow give the same problem with strictly positive marginals, finite
    potentials and finite gradients, while the masses still balance; entries below the floor get no gradient.
    Because of the renormalisation, unnormalised log-weights (e.g. raw logits) give the same result as their
    ``log_softmax``.

    Memory: autograd keeps about one ``(B, K, C)`` tensor per half-iteration, i.e. ``2 * n_iter * B * K * C``
    elements; shrink the batch (or ``n_iter``) for K=1000 teachers.

    Parameters
    ----------
    log_a : (B, K) teacher log-probabilities (e.g. ``log_softmax(teacher_logits / T)``).
    log_b : (B, C) student log-probabilities (``log_softmax``; pass log-softmax output, not ``log(softmax)``,
        whose gradient is NaN at exact zeros).
    M : (K, C) ground cost, a tensor (or array) on any device; cast to ``log_b``'s dtype/device.
    reg : entropic regularisation, > 0, in the units of ``M``.
    n_iter : number of Sinkhorn iterations (each: column then row scaling, as in POT).

    Returns
    -------
    (B,) tensor of per-sample transport costs.
    """
    import torch

    if not isinstance(log_b, torch.Tensor):
        log_b = torch.as_tensor(log_b)
    if not isinstance(log_a, torch.Tensor):
        log_a = torch.as_tensor(log_a)
    M = torch.as_tensor(M, dtype=log_b.dtype, device=log_b.device)
    log_a = log_a.to(dtype=log_b.dtype, device=log_b.device)
    if log_a.dim() != 2 or log_b.dim() != 2 or log_a.shape[0] != log_b.shape[0]:
        raise ValueError(f"log_a (B,K) and log_b (B,C) must be 2-D with the same B, got {tuple(log_a.shape)} "
                         f"and {tuple(log_b.shape)}")
    if M.shape != (log_a.shape[1], log_b.shape[1]):
        raise ValueError(f"M must have shape (K, C) = ({log_a.shape[1]}, {log_b.shape[1]}), got {tuple(M.shape)}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if n_iter < 1:
        raise ValueError("n_iter must be >= 1")

    la = log_a.clamp_min(LOG_PROB_FLOOR)
    lb = log_b.clamp_min(LOG_PROB_FLOOR)
    la = la - torch.logsumexp(la, dim=1, keepdim=True)
    lb = lb - torch.logsumexp(lb, dim=1, keepdim=True)
    Mr = (M / reg).unsqueeze(0)  # (1, K, C)

    f = torch.zeros_like(la)  # potentials in units of reg
    g = torch.zeros_like(lb)
    for _ in range(n_iter):
        g = lb - torch.logsumexp(f.unsqueeze(2) - Mr, dim=1)
        f = la - torch.logsumexp(g.unsqueeze(1) - Mr, dim=2)
    P = torch.exp(f.unsqueeze(2) + g.unsqueeze(1) - Mr)
    return (P * M.unsqueeze(0)).sum(dim=(1, 2))


# --------------------------------------------------------------------------------------------------------------
# Ground costs between teacher classes (rows) and target classes (columns)
# --------------------------------------------------------------------------------------------------------------


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row (e.g. a target class with no samples) stays zero: cosine 0, i.e. "unrelated to everything".
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _prototype_cosines(classifier_weight, features, labels, n_classes: int, centre: bool = False) -> np.ndarray:
    W = _as_matrix(classifier_weight, "classifier_weight")
    F = _as_matrix(features, "features")
    if W.shape[1] != F.shape[1]:
        raise ValueError(f"classifier_weight (K, D) and features (N, D) disagree on D: {W.shape[1]} vs {F.shape[1]}")
    y = _as_labels(labels, n_classes, F.shape[0])
    counts = _class_counts(y, n_classes)
    means = _class_sums(F, y, n_classes) / np.maximum(counts, 1.0)[:, None]
    if centre:
        present = counts > 0
        # Class-balanced centre, so a frequent class does not pull it; absent classes stay zero (cosine 0).
        means[present] -= means[present].mean(axis=0)
    return _normalise_rows(W) @ _normalise_rows(means).T  # (K, C)


def cost_prototype(classifier_weight, features, labels, n_classes: int, centre: bool = False) -> np.ndarray:
    r"""Prototype ground cost :math:`M_{kc} = (1 - \cos(w_k, \mu_c)) / 2 \in [0, 1]`.

    ``w_k`` is the teacher's classifier row for source class k; ``mu_c`` is the target-class prototype, the
    L2-normalised mean teacher feature of the target samples labelled c (the class centres of REFILLED,
    Ye et al., "Distilling Cross-Task Knowledge via Relationship Matching", CVPR 2020). Both live in the teacher's
    penultimate feature space, so the cosine says how much class c looks like source class k to the teacher.

    A target class with no samples has a zero prototype, hence cost 0.5 to every teacher class.

    ``centre=True`` (the ``proto-centred`` cost) subtracts the class-balanced mean of the target prototypes before
    the cosine: :math:`\mu_c - \bar\mu`. A teacher from another domain sees every target image through the same
    offset (to EfficientNet, every Animal-MNIST silhouette looks a little like a hatchet), and that shared
    direction dominates the raw cosines; what tells the target classes apart is the remainder, and that is what
    should meet the teacher's classes (a zebra silhouette's remainder points at ImageNet's ``zebra`` row).

    Parameters: classifier_weight (K, D), features (N, D) teacher features of the target samples, labels (N,),
    centre.
    Returns: (K, C) float64.
    """
    cos = _prototype_cosines(classifier_weight, features, labels, n_classes, centre=centre)
    return np.clip((1.0 - cos) / 2.0, 0.0, 1.0)


def cost_prototype_softmax(classifier_weight, features, labels, n_classes: int,
                           temperature: float = 0.1, centre: bool = False) -> np.ndarray:
    r"""Discriminative prototype cost :math:`M_{kc} = -\log q(c|k) / \log C`, clipped to [0, 1].

    :math:`q(c|k) = \mathrm{softmax}_c(\cos(w_k, \mu_c) / \tau)`. Unlike :func:`cost_prototype`, the cost of
    (k, c) depends on how much better c matches k than the other target classes do: a teacher whose features map
    every target class to the same prototype gets q = 1/C everywhere, i.e. cost 1, however close that prototype
    is to some w_k. Dividing by log C puts the uniform case at 1 whatever the number of target classes.

    Parameters: as :func:`cost_prototype` (``centre`` included), plus ``temperature`` (> 0).
    Returns: (K, C) float64 in [0, 1]; all zeros when C = 1 (nothing to discriminate).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cos = _prototype_cosines(classifier_weight, features, labels, n_classes, centre=centre)
    if n_classes == 1:
        return np.zeros_like(cos)
    z = cos / temperature
    log_q = z - _logsumexp(z, axis=1)[:, None]
    return np.clip(-log_q / math.log(n_classes), 0.0, 1.0)


def cost_joint(probs, labels, n_classes: int, alpha: float = 1e-3) -> np.ndarray:
    r"""Data-driven cost :math:`M_{kc} = 1 - P(c|k)` from the teacher's predictions on the target data.

    :math:`J_{kc} = \frac1N \sum_i p_{ik} [y_i = c]` is the empirical joint of teacher class and target label
    (the quantity LEEP is built on, Nguyen et al., ICML 2020), smoothed with ``alpha`` spread uniformly over the
    C target classes: :math:`P(c|k) = (J_{kc} + \alpha/C) / (\sum_{c'} J_{kc'} + \alpha)`. The smoothing makes
    teacher classes that receive no mass uniform (cost 1 - 1/C) instead of undefined.

    Parameters: probs (N, K) teacher softmax, labels (N,), n_classes C, alpha >= 0 (> 0 unless every teacher class
    receives mass).
    Returns: (K, C) float64 in [0, 1].
    """
    p = _as_probs(probs)
    y = _as_labels(labels, n_classes, p.shape[0])
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    J = _class_sums(p, y, n_classes).T / p.shape[0]  # (K, C)
    den = J.sum(axis=1, keepdims=True) + alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = (J + alpha / n_classes) / den
    cond = np.where(den > 0, cond, 1.0 / n_classes)
    return np.clip(1.0 - cond, 0.0, 1.0)


def _cost_proto_entry(*, classifier_weight=None, features=None, probs=None, labels, n_classes, **kw):
    _require("proto", classifier_weight=classifier_weight, features=features)
    return cost_prototype(classifier_weight, features, labels, n_classes)


def _cost_proto_softmax_entry(*, classifier_weight=None, features=None, probs=None, labels, n_classes,
                              temperature: float = 0.1, **kw):
    _require("proto-softmax", classifier_weight=classifier_weight, features=features)
    return cost_prototype_softmax(classifier_weight, features, labels, n_classes, temperature=temperature)


def _cost_proto_centred_entry(*, classifier_weight=None, features=None, probs=None, labels, n_classes, **kw):
    _require("proto-centred", classifier_weight=classifier_weight, features=features)
    return cost_prototype(classifier_weight, features, labels, n_classes, centre=True)


def _cost_proto_softmax_centred_entry(*, classifier_weight=None, features=None, probs=None, labels, n_classes,
                                      temperature: float = 0.1, **kw):
    _require("proto-softmax-centred", classifier_weight=classifier_weight, features=features)
    return cost_prototype_softmax(classifier_weight, features, labels, n_classes, temperature=temperature,
                                  centre=True)


def _cost_joint_entry(*, classifier_weight=None, features=None, probs=None, labels, n_classes,
                      alpha: float = 1e-3, **kw):
    _require("joint", probs=probs)
    return cost_joint(probs, labels, n_classes, alpha=alpha)


def _require(what: str, **inputs) -> None:
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise ValueError(f"{what} needs {', '.join(missing)}")


#: The ground cost a ranking uses unless one is named: the ranking benchmark's choice (docs/method.md §7; over
#: 14 tasks ``joint`` had the higher weighted τ than ``proto-softmax`` on 12, +0.14 on average).
DEFAULT_COST = "joint"
#: The ground cost the distillation loss uses unless one is named: the one its defaults were tuned and measured
#: with (docs/method.md §5); the ranking benchmark did not compare costs for distillation.
DEFAULT_DISTILL_COST = "proto-softmax"

#: The cost whose nearest classes are reported as the label-space bridge (``matches``), whatever cost scores: the
#: centred prototype cost reads best (zebra silhouettes -> ImageNet ``zebra``; see ``cost_prototype``).
BRIDGE_COST = "proto-centred"

#: name -> function(*, classifier_weight, features, probs, labels, n_classes, **options) -> (K, C) cost.
COSTS: dict[str, Callable[..., np.ndarray]] = {
    "proto": _cost_proto_entry,
    "proto-softmax": _cost_proto_softmax_entry,
    "proto-centred": _cost_proto_centred_entry,
    "proto-softmax-centred": _cost_proto_softmax_centred_entry,
    "joint": _cost_joint_entry,
}


def cost_matrix(name: str, *, classifier_weight=None, features=None, probs=None, labels, n_classes: int,
                **options) -> np.ndarray:
    """Ground cost ``name`` (a key of :data:`COSTS`) between the teacher's K classes and the C target classes.

    Pass whatever you have; each cost takes what it needs (``proto``/``proto-softmax``: classifier_weight and
    features, and their ``-centred`` variants; ``joint``: probs) and raises ValueError if it is missing. ``options`` go to the cost
    (``temperature`` for proto-softmax, ``alpha`` for joint); options meant for other costs are ignored.
    """
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; choose from {sorted(COSTS)}")
    return COSTS[name](classifier_weight=classifier_weight, features=features, probs=probs, labels=labels,
                       n_classes=n_classes, **options)


# --------------------------------------------------------------------------------------------------------------
# Teacher relatedness
# --------------------------------------------------------------------------------------------------------------


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


def _check_names(X: np.ndarray, what: str, teacher_labels: Sequence[str], target_labels: Sequence[str]):
    K, C = X.shape
    if len(teacher_labels) != K or len(target_labels) != C:
        raise ValueError(f"{what} is {K}x{C} but got {len(teacher_labels)} teacher and {len(target_labels)} "
                         "target names")
    return K, C


def _check_k(k: int, K: int) -> int:
    if k < 1:
        raise ValueError("k must be >= 1")
    return min(k, K)


def top_correspondences(plan, teacher_labels: Sequence[str], target_labels: Sequence[str],
                        k: int = 3) -> dict[str, list[tuple[str, float]]]:
    """For each target class, the ``k`` teacher classes it draws most transport mass from.

    ``share`` is the fraction of that target class's column mass coming from the teacher class (shares of a full
    column sum to 1). A target class with no mass maps to an empty list.
    """
    P = _as_matrix(plan, "plan")
    K, C = _check_names(P, "plan", teacher_labels, target_labels)
    k = _check_k(k, K)
    out: dict[str, list[tuple[str, float]]] = {}
    col_mass = P.sum(axis=0)
    for c in range(C):
        if col_mass[c] <= 0:
            out[target_labels[c]] = []
            continue
        share = P[:, c] / col_mass[c]
        top = np.argsort(-share, kind="stable")[:k]
        out[target_labels[c]] = [(teacher_labels[j], float(share[j])) for j in top]
    return out


def nearest_classes(M, teacher_labels: Sequence[str], target_labels: Sequence[str],
                    k: int = 3) -> dict[str, list[tuple[str, float]]]:
    """For each target class, the ``k`` teacher classes with the lowest ground cost: the label-space bridge itself.

    The plan (:func:`top_correspondences`) says where the teacher's *predictions* on a target class go; for a
    teacher far from the target's domain they go wherever the domain shift sends them (Animal-MNIST silhouettes
    are "hatchets" to ImageNet models). The cost matrix says which teacher class each target class is closest to
    once that shift is discounted (see the ``-centred`` costs), which is often the more readable answer. Values
    are the costs (lower = closer).
    """
    M = _as_matrix(M, "M")
    K, C = _check_names(M, "cost matrix", teacher_labels, target_labels)
    k = _check_k(k, K)
    out: dict[str, list[tuple[str, float]]] = {}
    for c in range(C):
        top = np.argsort(M[:, c], kind="stable")[:k]
        out[target_labels[c]] = [(str(teacher_labels[i]), float(M[i, c])) for i in top]
    return out


PLAN_MAX_TEACHER_CLASSES = 60
PLAN_MAX_TARGET_CLASSES = 60


def plan_summary(plan, teacher_labels: Sequence[str], target_labels: Sequence[str], *,
                 max_teacher_classes: int = PLAN_MAX_TEACHER_CLASSES,
                 max_target_classes: int = PLAN_MAX_TARGET_CLASSES, digits: int = 4) -> dict:
    """The transport plan as a heatmap can show it, small enough to store with every ranked teacher.

    Values are column shares (as in :func:`top_correspondences`): ``share[i][j]`` is the fraction of target
    class ``target_classes[j]``'s mass that comes from teacher class ``teacher_classes[i]``. An ImageNet teacher
    has 1000 classes, of which a few carry the mass: past ``max_teacher_classes`` only the teacher classes with
    the most mass (over the kept target columns) are kept, ordered by the target class they send most to, then by
    mass, so the plan reads as blocks; ``kept_share`` says how much of each column they hold. Past
    ``max_target_classes`` the first target classes are kept.
    """
    P = _as_matrix(plan, "plan")
    K, C = _check_names(P, "plan", teacher_labels, target_labels)
    if max_teacher_classes < 1 or max_target_classes < 1:
        raise ValueError("the plan summary must keep at least one class on each side")
    cols = np.arange(min(C, max_target_classes))
    col_mass = P[:, cols].sum(axis=0)
    share = np.divide(P[:, cols], col_mass, out=np.zeros((K, len(cols))), where=col_mass > 0)
    if K <= max_teacher_classes:
        rows = np.arange(K)  # all of a small teacher's classes, in its own order: its zeros say something too
    else:
        row_mass = share.sum(axis=1)
        rows = np.argsort(-row_mass, kind="stable")[:max_teacher_classes]
        # Block-diagonal order: by the target column a teacher class favours, heaviest first within a column.
        rows = rows[np.lexsort((-row_mass[rows], share[rows].argmax(axis=1)))]
    kept = share[rows]
    return {
        "teacher_classes": [str(teacher_labels[i]) for i in rows],
        "teacher_index": [int(i) for i in rows],
        "target_classes": [str(target_labels[j]) for j in cols],
        "share": [[round(float(x), digits) for x in r] for r in kept],
        "kept_share": [round(float(x), digits) for x in kept.sum(axis=0)],
        "teacher_num_classes": int(K),
        "target_num_classes": int(C),
        "truncated": bool(len(rows) < K or len(cols) < C),
    }
