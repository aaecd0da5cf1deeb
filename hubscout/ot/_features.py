"""Transport in the teacher's feature space: how well a teacher's embedding carries the target's labels.

Candidates under trial for ranking v2 (``benchmarks.ranking_dev``, dev half only). Every score is higher =
better and invariant to the scale and dimension of the teacher's features, so that a 1,280-d ImageNet
embedding and a 64-d one are comparable.
"""
from __future__ import annotations

import math

import numpy as np

from hubscout.ot._sinkhorn import sinkhorn_log
from hubscout.ot._validation import _as_labels, _as_matrix, _class_counts, _class_sums, _logsumexp


def embed(features, labels, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows L2-normalised, then centred on the class-balanced mean of the class means (a teacher from another
    domain sees every target image through a shared offset; what separates the classes is the remainder), then
    scaled so that the mean squared distance of a sample to its class mean is 1. Returns (Z, y)."""
    F = _as_matrix(features, "features")
    y = _as_labels(labels, n_classes, F.shape[0])
    n = np.linalg.norm(F, axis=1, keepdims=True)
    Z = np.divide(F, n, out=np.zeros_like(F), where=n > 0)
    counts = _class_counts(y, n_classes)
    present = counts > 0
    means = _class_sums(Z, y, n_classes) / np.maximum(counts, 1.0)[:, None]
    Z = Z - means[present].mean(axis=0)
    means = means - means[present].mean(axis=0)
    within = float(np.mean(np.sum((Z - means[y]) ** 2, axis=1)))
    return Z / math.sqrt(max(within, 1e-12)), y


def _loo_sq_dist(Z: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) squared distances of each sample to each class mean, its own class's mean taken without it."""
    counts = _class_counts(y, n_classes)
    sums = _class_sums(Z, y, n_classes)
    means = sums / np.maximum(counts, 1.0)[:, None]
    D = np.sum(Z ** 2, axis=1)[:, None] - 2 * Z @ means.T + np.sum(means ** 2, axis=1)[None, :]
    own = counts[y] - 1
    # Leave-one-out mean of the own class: (sum - z_i) / (n_c - 1); a class of one sample has none.
    loo = (sums[y] - Z) / np.maximum(own, 1)[:, None]
    d_own = np.sum((Z - loo) ** 2, axis=1)
    D[np.arange(len(y)), y] = np.where(own > 0, d_own, np.inf)
    D[:, counts == 0] = np.inf
    return np.maximum(D, 0.0)


def _loo_loglik(Z: np.ndarray, y: np.ndarray, n_classes: int, temperature: float) -> float:
    """Mean leave-one-out log-softmax of minus the halved squared distances (over ``temperature``) at the own
    class."""
    D = _loo_sq_dist(Z, y, n_classes)
    logits = np.where(np.isfinite(D), -D / (2 * temperature), -1e30)
    m = logits.max(1, keepdims=True)
    lse = np.log(np.sum(np.exp(logits - m), axis=1)) + m[:, 0]
    ok = np.isfinite(D[np.arange(len(y)), y])
    return float(np.mean((logits[np.arange(len(y)), y] - lse)[ok])) if ok.any() else float("nan")


def loo_prototype_loglik(features, labels, n_classes: int, temperature: float = 1.0, **_) -> float:
    """Mean log-probability of the true class under a leave-one-out nearest-mean softmax on :func:`embed`."""
    Z, y = embed(features, labels, n_classes)
    return _loo_loglik(Z, y, n_classes, temperature)


def _transport_share(Z: np.ndarray, y: np.ndarray, n_classes: int, reg: float) -> float:
    """The share of the mass the entropic OT plan from the samples (uniform) to the label frequencies, under the
    leave-one-out Gaussian cost (half the squared distance), carries to each sample's own label (in [0, 1])."""
    D = _loo_sq_dist(Z, y, n_classes) / 2.0
    counts = _class_counts(y, n_classes)
    cols = counts > 0
    D = D[:, cols]
    D = np.where(np.isfinite(D), D, D[np.isfinite(D)].max() + 10.0)
    D = D - D.min(axis=1, keepdims=True)  # a per-sample constant changes neither the plan nor the score
    P = sinkhorn_log(np.full(len(y), 1.0 / len(y)), counts[cols] / counts.sum(), D, reg, n_iter=200)
    col_of = np.cumsum(cols) - 1
    return float(np.sum(P[np.arange(len(y)), col_of[y]]))


def loo_transport(features, labels, n_classes: int, reg: float = 1.0, **_) -> float:
    r"""Share of the target's mass that entropic OT carries to its own label: the samples (uniform) are
    transported onto the label distribution (the class frequencies) under the cost of :func:`_loo_sq_dist`
    (halved: a unit-variance Gaussian's log-likelihood), ε = ``reg``, in :func:`embed`. The label marginal makes
    the transport balanced: a teacher that squeezes every target image towards one class cannot score by it."""
    Z, y = embed(features, labels, n_classes)
    return _transport_share(Z, y, n_classes, reg)


def class_wasserstein_separation(features, labels, n_classes: int, reg: float = 0.1, **_) -> float:
    r"""Mean over pairs of target classes of :math:`\log W_\varepsilon(P_i, P_j)` between their empirical
    distributions in :func:`embed` (squared Euclidean cost, within-class spread 1): how far apart the teacher
    puts the target's classes, counting their shapes, not only their means."""
    Z, y = embed(features, labels, n_classes)
    cls = [c for c in range(n_classes) if np.any(y == c)]
    vals = []
    for i, ci in enumerate(cls):
        Xi = Z[y == ci]
        for cj in cls[i + 1:]:
            Xj = Z[y == cj]
            M = np.sum(Xi ** 2, 1)[:, None] - 2 * Xi @ Xj.T + np.sum(Xj ** 2, 1)[None, :]
            M = np.maximum(M, 0.0)
            P = sinkhorn_log(np.full(len(Xi), 1 / len(Xi)), np.full(len(Xj), 1 / len(Xj)), M / M.max(),
                             reg, n_iter=200)
            vals.append(math.log(max(float(np.sum(P * M)), 1e-12)))
    return float(np.mean(vals)) if vals else float("nan")


def label_transport(features, labels, n_classes: int, probs=None, classifier_weight=None, reg: float = 0.05,
                    **_) -> float:
    r"""K×C entropic OT between the teacher's label distribution on the target (its mean prediction) and the
    target's (class frequencies), under the centred prototype cost (teacher class row vs target class mean):
    the cost of moving the teacher's label space onto the target's, with non-trivial marginals. Negated."""
    from hubscout.ot._costs import cost_prototype

    p = np.asarray(probs, dtype=np.float64)
    y = _as_labels(labels, n_classes, p.shape[0])
    M = cost_prototype(classifier_weight, features, y, n_classes, centre=True)
    a = p.mean(axis=0)
    a = a / a.sum()
    b = _class_counts(y, n_classes) / len(y)
    keep = b > 0
    P = sinkhorn_log(a, b[keep], M[:, keep], reg)
    return -float(np.sum(P * M[:, keep]))


def _batched_sinkhorn_cost(A: np.ndarray, B: np.ndarray, G: np.ndarray, reg: float, n_iter: int = 100) -> np.ndarray:
    """Entropic OT costs <P_i, G> between histogram pairs (A[i], B[i]) over one support with ground cost G."""
    logK = -G / reg
    la = np.log(np.maximum(A, 1e-300))
    lb = np.log(np.maximum(B, 1e-300))
    f = np.zeros_like(A)
    g = np.zeros_like(B)
    for _ in range(n_iter):
        g = lb - _logsumexp(f[:, :, None] + logK[None], axis=1)
        f = la - _logsumexp(g[:, None, :] + logK[None], axis=2)
    logP = f[:, :, None] + logK[None] + g[:, None, :]
    return np.sum(np.exp(logP) * G[None], axis=(1, 2))


def label_wasserstein_separation(features, labels, n_classes: int, probs=None, classifier_weight=None,
                                 support: int = 32, reg: float = 0.05, **_) -> float:
    r"""How far apart the teacher's *label space* puts the target's classes, by optimal transport.

    Each target image is a histogram over the teacher's classes (its prediction); each target class the mean
    histogram of its images. The ground cost between two teacher classes is :math:`(1-\cos(w_k, w_{k'}))/2`
    (their classifier rows), so mapping sandals to "sandal" and sneakers to "sneaker" separates less than mapping
    them to "sandal" and "zebra". Score: :math:`\log` (mean entropic W between class histograms / mean entropic
    W of an image's histogram to its class's): a Fisher ratio in the teacher's label space. The support is the
    ``support`` teacher classes with the most mass on the target plus one "elsewhere" atom at cost 1 from all.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = _as_labels(labels, n_classes, p.shape[0])
    W = _as_matrix(classifier_weight, "classifier_weight")
    top = np.argsort(-p.sum(axis=0))[: min(support, p.shape[1])]
    rest = np.clip(1.0 - p[:, top].sum(axis=1, keepdims=True), 0.0, None)
    H = np.concatenate([p[:, top], rest], axis=1)
    H = H / H.sum(axis=1, keepdims=True)
    Wn = W[top] / np.maximum(np.linalg.norm(W[top], axis=1, keepdims=True), 1e-12)
    G = np.ones((len(top) + 1, len(top) + 1))
    G[:-1, :-1] = np.clip((1.0 - Wn @ Wn.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(G, 0.0)
    counts = _class_counts(y, n_classes)
    cls = np.flatnonzero(counts > 0)
    Q = _class_sums(H, y, n_classes) / np.maximum(counts, 1.0)[:, None]
    within = float(np.mean(_batched_sinkhorn_cost(H, Q[y], G, reg)))
    pairs = [(i, j) for a, i in enumerate(cls) for j in cls[a + 1:]]
    if not pairs:
        return float("nan")
    between = float(np.mean(_batched_sinkhorn_cost(Q[[i for i, _ in pairs]], Q[[j for _, j in pairs]], G, reg)))
    return math.log(max(between, 1e-12)) - math.log(max(within, 1e-12))


def both_separations(features, labels, n_classes: int, probs=None, classifier_weight=None, **_) -> float:
    """Feature-space and label-space OT separation ratios together (their logs added)."""
    return (class_wasserstein_separation(features, labels, n_classes)
            + label_wasserstein_separation(features, labels, n_classes, probs=probs,
                                           classifier_weight=classifier_weight))


def embed_whitened(features, labels, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The features in the span of the target samples, centred on the class-balanced mean and whitened by the
    pooled within-class covariance (Ledoit-Wolf shrunk towards a multiple of I, as H-score's): a Gaussian
    class-conditional model with a shared covariance, in which the class posterior of a sample is the softmax of
    minus half its squared distances to the class means (linear discriminant analysis). Returns (X, y)."""
    from hubscout.scores import _ledoit_wolf_shrinkage

    F = _as_matrix(features, "features")
    y = _as_labels(labels, n_classes, F.shape[0])
    counts = _class_counts(y, n_classes)
    present = counts > 0
    means = _class_sums(F, y, n_classes) / np.maximum(counts, 1.0)[:, None]
    Fc = F - means[present].mean(axis=0)
    U, S, _ = np.linalg.svd(Fc, full_matrices=False)
    r = int(np.sum(S > 1e-10 * max(S[0], 1e-300)))
    X = U[:, :r] * S[:r]
    mx = _class_sums(X, y, n_classes) / np.maximum(counts, 1.0)[:, None]
    R = X - mx[y]
    Sw = R.T @ R / len(y)
    lam = _ledoit_wolf_shrinkage(R, Sw)
    Sw = (1.0 - lam) * Sw
    Sw[np.diag_indices(r)] += lam * np.trace(R.T @ R / len(y)) / r
    w, V = np.linalg.eigh(Sw)
    return X @ (V / np.sqrt(np.maximum(w, 1e-12 * w.max()))), y


def lda_loo_loglik(features, labels, n_classes: int, **_) -> float:
    """Mean leave-one-out log-posterior of the true class under :func:`embed_whitened`'s Gaussian model."""
    X, y = embed_whitened(features, labels, n_classes)
    return _loo_loglik(X, y, n_classes, 1.0)


def lda_loo_transport(features, labels, n_classes: int, **_) -> float:
    r"""Share of the target's mass that entropic OT (ε = 1) carries to its own label under the leave-one-out
    Gaussian cost of :func:`embed_whitened`: with ε = 1 the Gibbs kernel is the model's likelihood, so the plan
    is its class posterior made to respect the label marginals (Sinkhorn as a balanced Bayes assignment)."""
    X, y = embed_whitened(features, labels, n_classes)
    return _transport_share(X, y, n_classes, 1.0)

CANDIDATES = {
    "f:loo-loglik": loo_prototype_loglik,
    "f:loo-transport": loo_transport,
    "f:loo-transport[0.3]": lambda *a, **k: loo_transport(*a, reg=0.3, **k),
    "f:class-w": class_wasserstein_separation,
    "f:label-ot": label_transport,
    "f:label-w": label_wasserstein_separation,
    "f:both-w": both_separations,
    "f:lda-loglik": lda_loo_loglik,
    "f:lda-transport": lda_loo_transport,
}
