"""Ground costs between teacher classes (rows) and target classes (columns): the one place a cost is computed.

Each cost is registered in :data:`COSTS` (``@COSTS.register(name)``); :func:`cost_matrix` calls one by name with
whatever inputs the caller has, and each takes what it needs.
"""
from __future__ import annotations

import math

import numpy as np

from hubscout.ot._validation import _as_labels, _as_matrix, _as_probs, _class_counts, _class_sums, _logsumexp
from hubscout.registry import Registry

#: name -> the cost ``fn(*, classifier_weight, features, probs, labels, n_classes, **options) -> (K, C)``; the
#: ``-centred`` variants are the same functions with ``centre=True``.
COSTS = Registry("cost", directions=())

#: The ground cost a ranking uses unless one is named: the ranking benchmark's choice (docs/method.md §7; over
#: 14 tasks ``joint`` had the higher weighted τ than ``proto-softmax`` on 12, +0.14 on average).
DEFAULT_COST = "joint"
#: The ground cost the distillation loss uses unless one is named: the one its defaults were tuned and measured
#: with (docs/method.md §5); the ranking benchmark did not compare costs for distillation.
DEFAULT_DISTILL_COST = "proto-softmax"

#: The cost whose nearest classes are reported as the label-space bridge (``matches``), whatever cost scores: the
#: centred prototype cost reads best (zebra silhouettes -> ImageNet ``zebra``; see ``cost_prototype``).
BRIDGE_COST = "proto-centred"


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


@COSTS.register("proto")
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


@COSTS.register("proto-softmax")
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


# Registered here, not stacked above the functions, so the registry keeps the order the costs were introduced in.
COSTS.register("proto-centred", centre=True)(cost_prototype)
COSTS.register("proto-softmax-centred", centre=True)(cost_prototype_softmax)


@COSTS.register("joint")
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


def cost_matrix(name: str, *, classifier_weight=None, features=None, probs=None, labels, n_classes: int,
                **options) -> np.ndarray:
    """Ground cost ``name`` (a key of :data:`COSTS`) between the teacher's K classes and the C target classes.

    Pass whatever you have; each cost takes what it needs (``proto``/``proto-softmax``: classifier_weight and
    features, and their ``-centred`` variants; ``joint``: probs) and raises ValueError if it is missing. ``options`` go to the cost
    (``temperature`` for proto-softmax, ``alpha`` for joint); options meant for other costs are ignored.
    """
    return COSTS.get(name).fn(classifier_weight=classifier_weight, features=features, probs=probs, labels=labels,
                              n_classes=n_classes, **options)
