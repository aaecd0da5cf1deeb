"""Baseline transferability scores and the metric registry used to rank teachers.

Every baseline is "higher = more transferable"; the OT relatedness of :mod:`hubscout.ot` is "lower = better".
Values follow the reference implementations in thuml/LogME and thuml/Transfer-Learning-Library
(``tllib.ranking``) on the same inputs; where we deliberately differ it is said in the docstring.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.linalg

from hubscout.ot import (BRIDGE_COST, DEFAULT_COST, OTResult, cost_matrix, nearest_classes, ot_relatedness,
                         plan_summary, top_correspondences)
from hubscout.ot._validation import _as_labels, _as_matrix, _as_probs, _class_counts, _class_sums
from hubscout.registry import Entry, Registry

__all__ = ["ot_score", "leep", "nce", "hscore", "logme", "nleep", "sfda", "ncti", "ncti_terms", "ncti_combine", "gbc",
           "transrate", "param_count", "source_accuracy", "Metric", "METRICS", "DEFAULT_METRIC", "DEFAULT_METRICS",
           "resolve_metrics"]

#: The teacher-ranking scores, in the order "all" lists them (the first, OT, orders by default). A score is
#: ``@METRICS.register(name, direction="higher"|"lower", needs="probs"|"features"|"both"|"teacher")`` on a function of the
#: teacher's outputs on the target (``probs``, ``features``, ``classifier_weight``), ``labels`` and ``n_classes``.
METRICS = Registry("metric")

#: The metric a ranking orders by when a request names none (API, CLI, client, library, web page); docs/method.md
#: §7 says why.
DEFAULT_METRIC = "hscore"
#: What a request that names no metric computes: the default metric first (it orders), then OT whatever orders,
#: because OT's plan and correspondences are the ranking's explanation (which teacher class meets which of yours).
DEFAULT_METRICS: tuple[str, ...] = tuple(dict.fromkeys((DEFAULT_METRIC, "ot")))
#: A registered score: name, direction ("higher" or "lower" is better), needs (which teacher outputs it reads),
#: fn (called as ``fn(*, probs, features, classifier_weight, labels, n_classes, **kw)``, ignoring what it does not
#: use).
Metric = Entry


def _ot_readout(result: OTResult, *, teacher_labels: Sequence[str], target_labels: Sequence[str], classifier_weight,
                features, labels, n_classes: int, cost: str, k: int = 3, **_) -> dict[str, Any]:
    """What a ranking shows beside the OT score: the plan, its top correspondences and summary, and the nearest
    classes under the bridge cost (hubscout.ot.BRIDGE_COST), whatever cost scored."""
    bridge = result.cost_matrix if cost == BRIDGE_COST else cost_matrix(
        BRIDGE_COST, classifier_weight=classifier_weight, features=features, labels=labels, n_classes=n_classes)
    return {"plan": result.plan,
            "correspondences": top_correspondences(result.plan, teacher_labels, target_labels, k=k),
            "matches": nearest_classes(bridge, teacher_labels, target_labels, k=k),
            "plan_summary": plan_summary(result.plan, teacher_labels, target_labels)}


@METRICS.register("ot", direction="lower", needs="both", value=lambda r: float(r.score), readout=_ot_readout)
def ot_score(probs, labels, n_classes: int, classifier_weight=None, features=None, cost: str = DEFAULT_COST,
             **options) -> OTResult:
    """OT relatedness (ours, :func:`hubscout.ot.ot_relatedness`) under the ground cost ``cost``; ``temperature``
    and ``alpha`` among ``options`` go to the cost."""
    M = cost_matrix(cost, classifier_weight=classifier_weight, features=features, probs=probs, labels=labels,
                    n_classes=n_classes, **{k: v for k, v in options.items() if k in ("temperature", "alpha")})
    return ot_relatedness(probs, labels, n_classes, M)


def _probs_and_labels(probs, labels, n_classes):
    p = _as_probs(probs)
    return p, _as_labels(labels, n_classes, p.shape[0])


def _features_and_labels(features, labels, n_classes):
    f = _as_matrix(features, "features")
    y = _as_labels(labels, n_classes, f.shape[0])
    if f.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    return f, y


@METRICS.register("leep", direction="higher", needs="probs")
def leep(probs, labels, n_classes: int) -> float:
    r"""LEEP, Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
    ICML 2020.

    With :math:`\theta_i` the teacher's softmax over source classes z:
    :math:`\hat P(y, z) = \frac1N \sum_i \theta_{iz} [y_i = y]`, :math:`\hat P(y|z) = \hat P(y,z) / \hat P(z)`,
    :math:`\mathrm{LEEP} = \frac1N \sum_i \log \sum_z \hat P(y_i|z)\, \theta_{iz}` (<= 0; higher is better).

    probs (N, K), labels (N,) in [0, n_classes).
    """
    p, y = _probs_and_labels(probs, labels, n_classes)
    joint = _class_sums(p, y, n_classes) / p.shape[0]  # (C, K)
    pz = joint.sum(axis=0)
    # A source class no sample puts mass on never enters the sum below (theta_iz = 0), so 0 is as good as any.
    cond = np.divide(joint, pz[None, :], out=np.zeros_like(joint), where=pz[None, :] > 0)  # P(y|z), (C, K)
    # EEP for the true label only, sum_z theta_iz P(y_i|z), one class at a time: no (N, C) or second (N, K) array.
    eep = np.empty(y.size)
    for c in np.unique(y):
        sel = y == c
        eep[sel] = p[sel] @ cond[c]
    # eep_i > 0 always: every z with theta_iz > 0 gets P(y_i|z) >= theta_iz / (N P(z)) > 0 from sample i itself.
    return float(np.mean(np.log(eep)))


@METRICS.register("nce", direction="higher", needs="probs")
def nce(probs, labels, n_classes: int) -> float:
    r"""NCE, Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.

    Hard source labels :math:`z_i = \arg\max_k \theta_{ik}`; from the empirical joint of (z, y),
    :math:`\mathrm{NCE} = -H(Y|Z) = \sum_{z,y} \hat P(z,y) \log \hat P(y|z)` (<= 0; higher is better).

    probs (N, K), labels (N,) in [0, n_classes).
    """
    p, y = _probs_and_labels(probs, labels, n_classes)
    K = p.shape[1]
    z = np.argmax(p, axis=1)
    counts = np.bincount(z * n_classes + y, minlength=K * n_classes).reshape(K, n_classes).astype(np.float64)
    joint = counts / y.size
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    # Only observed (z, y) pairs contribute (0 log 0 = 0); pz > 0 wherever joint > 0.
    return float(np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])))


def _ledoit_wolf_shrinkage(fc: np.ndarray, S: np.ndarray) -> float:
    r"""Ledoit & Wolf (J. Multivariate Anal. 2004) shrinkage intensity towards :math:`\mu I`.

    ``fc`` centred features (N, D), ``S = fc^T fc / N``. The same estimator as sklearn's ``LedoitWolf``:
    :math:`\lambda = \min(b^2, d^2) / d^2` with :math:`d^2 = \|S - \mu I\|_F^2 / D` and
    :math:`b^2 = \frac{1}{N^2 D}\sum_i \|f_i f_i^T - S\|_F^2`, :math:`\mu = \mathrm{tr}(S)/D`.
    """
    N, D = fc.shape
    mu = np.trace(S) / D
    s_fro2 = float(np.sum(S * S))
    d2 = (s_fro2 - 2.0 * mu * np.trace(S) + D * mu * mu) / D
    # sum_i ||f_i f_i^T - S||_F^2 = sum_i ||f_i||^4 - N ||S||_F^2 (cross terms collapse because mean(f f^T) = S).
    b2 = (np.sum(np.sum(fc * fc, axis=1) ** 2) / N - s_fro2) / (N * D)
    b2 = min(b2, d2)
    return 0.0 if b2 <= 0 else float(b2 / d2)


def _hscore_shrunk_dual(fc: np.ndarray, means: np.ndarray, w_cls: np.ndarray) -> float | None:
    r"""The shrunk H-score when N < D, in the N-dimensional sample space: the value of the (D, D) route.

    Ledoit-Wolf only needs :math:`\mathrm{tr}(S)`, :math:`\|S\|_F^2` and the row norms, which the Gram matrix
    :math:`G = f_c f_c^T` gives (:math:`\|S\|_F = \|G\|_F / N`); with
    :math:`\mathrm{cov}_\lambda = \frac{1-\lambda}{N} f_c^T f_c + a I`, Woodbury's identity gives
    :math:`a\,\mathrm{cov}_\lambda^{-1} m = m - f_c^T (k I + G)^{-1} f_c m`, :math:`k = aN/(1-\lambda)`.
    O(N²D) instead of O(ND² + D³): a 10-shot target on a 1,280-d ImageNet feature solves a 30×30 system instead
    of factorising a 1,280×1,280 covariance. None when nothing is shrunk (the caller's pseudo-inverse route).
    """
    N, D = fc.shape
    G = fc @ fc.T
    tr_s = float(np.trace(G)) / N
    s_fro2 = float(np.sum(G * G)) / (N * N)
    mu = tr_s / D
    d2 = (s_fro2 - 2.0 * mu * tr_s + D * mu * mu) / D
    b2 = min((float(np.sum(np.diag(G) ** 2)) / N - s_fro2) / (N * D), d2)
    lam = 0.0 if b2 <= 0 else b2 / d2
    a = lam * mu
    if a <= 0:
        return None
    fm = fc @ means.T  # (N, C')
    quad = np.sum(means * means, axis=1)  # a m^T cov_lambda^-1 m, before the low-rank correction
    if lam < 1.0:
        k = a * N / (1.0 - lam)
        quad = quad - np.sum(fm * scipy.linalg.solve(G + k * np.eye(N), fm, assume_a="pos"), axis=0)
    return (1.0 - lam) * float(np.sum(w_cls * quad)) / a / (N - 1)


@METRICS.register("hscore", direction="higher", needs="features")
def hscore(features, labels, n_classes: int, shrinkage: bool = True) -> float:
    r"""H-score, Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning",
    ICIP 2019: :math:`\mathrm{tr}(\mathrm{cov}(f)^{-1} \mathrm{cov}(\mathbb{E}[f|y]))` (higher is better).

    ``shrinkage=True`` (default): the regularised H-score of Ibrahim et al., "Newer is not always better:
    Rethinking transferability metrics, their peculiarities, stability and performance", NeurIPS 2021:
    :math:`\mathrm{tr}(\mathrm{cov}_\lambda(f)^{-1} (1-\lambda)\, \mathrm{cov}(\mathbb{E}[f|y]))` where
    :math:`\mathrm{cov}_\lambda = (1-\lambda) S + \lambda \mu I` is the Ledoit-Wolf estimate (S the maximum
    likelihood covariance). The plain version inverts a rank-deficient covariance when N <= D and is then
    dominated by noise; shrinkage keeps few-shot rankings stable.

    ``shrinkage=False``: the original, with the unbiased covariance and its pseudo-inverse (relative cut-off
    1e-15), as ``tllib.ranking.h_score``. Both match the tllib functions (``regularized_h_score`` for the
    shrunk one), including tllib's mix of ddof=1 for the between-class covariance and ddof=0 inside Ledoit-Wolf.

    features (N, D), labels (N,) in [0, n_classes).
    """
    f, y = _features_and_labels(features, labels, n_classes)
    N, D = f.shape
    fc = f - f.mean(axis=0, keepdims=True)
    counts = _class_counts(y, n_classes)
    present = counts > 0
    means = _class_sums(fc, y, n_classes)[present] / counts[present, None]  # (C', D), centred class means
    w_cls = counts[present]

    if shrinkage and N < D:
        dual = _hscore_shrunk_dual(fc, means, w_cls)
        if dual is not None:
            return dual
    if shrinkage:
        S = fc.T @ fc / N
        lam = _ledoit_wolf_shrinkage(fc, S)
        cov = (1.0 - lam) * S
        cov[np.diag_indices(D)] += lam * np.trace(S) / D
        scale = 1.0 - lam
    else:
        cov = fc.T @ fc / (N - 1)
        scale = 1.0

    # cov(E[f|y]) (ddof=1) = sum_c n_c mu_c mu_c^T / (N - 1), so the trace against a (pseudo-)inverse only needs
    # cov^-1 applied to the C' class means, never the (D, D) between-class matrix.
    if shrinkage:
        try:
            # Positive definite whenever lambda > 0 (or S is): a Cholesky solve is ~10x cheaper than the
            # eigendecomposition a pseudo-inverse needs, which matters at D = 2048.
            z = scipy.linalg.cho_solve(scipy.linalg.cho_factor(cov), means.T)  # (D, C')
            return scale * float(np.sum(w_cls * np.sum(means.T * z, axis=0))) / (N - 1)
        except np.linalg.LinAlgError:
            pass
    w, V = scipy.linalg.eigh(cov, driver="evr")
    cutoff = 1e-15 * np.max(np.abs(w))  # pinv(rcond=1e-15), as tllib
    inv_w = np.divide(1.0, w, out=np.zeros_like(w), where=np.abs(w) > cutoff)
    proj = means @ V  # (C', D)
    return scale * float(np.sum(w_cls[:, None] * proj * proj * inv_w[None, :])) / (N - 1)


def _log_evidence(sigma, x2, res_x2, N: int, D: int, alpha: float, beta: float, n_logdet_terms: int) -> float:
    r"""Log marginal evidence of Bayesian linear regression y ~ N(F w, 1/beta), w ~ N(0, 1/alpha I_D).

    ``sigma``: non-zero eigenvalues of F^T F; ``x2``: squared coordinates of y on the matching left singular
    vectors; ``res_x2``: the part of ||y||^2 outside their span. ``n_logdet_terms`` eigenvalues of
    A = alpha I + beta F^T F enter log|A| (D for the exact evidence); the missing ones equal alpha.
    The posterior mean m is the one for this (alpha, beta).
    """
    t = alpha / beta
    m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))  # ||m||^2
    res2 = float(np.sum(x2 * (t / (t + sigma)) ** 2) + res_x2)  # ||y - F m||^2
    # D/2 log(alpha) - 1/2 log|A| = (D - n_terms)/2 log(alpha) - 1/2 sum log(1 + beta sigma / alpha): written so
    # that the exact evidence never takes log(alpha) alone, and stays finite for features without any signal
    # (sigma empty, where the fixed point drives alpha to 0).
    n_alpha = D - n_logdet_terms
    log_alpha_part = 0.0 if n_alpha == 0 else n_alpha / 2.0 * (math.log(alpha) if alpha > 0 else -math.inf)
    logdet_rel = float(np.sum(np.log1p(beta * sigma / alpha))) if sigma.size else 0.0
    return (log_alpha_part - 0.5 * logdet_rel + N / 2.0 * math.log(beta) - beta / 2.0 * res2
            - alpha / 2.0 * m2 - N / 2.0 * math.log(2.0 * math.pi))


def _fixed_point(sigma, x2, res_x2, N: int, max_iter: int, tol: float) -> tuple[float, float]:
    """MacKay's evidence fixed point for (alpha, beta), iterated on t = alpha / beta as thuml/LogME does.

    The 1e-5 in the denominators is thuml's guard for a zero fit (all-zero label column or features).
    """
    alpha, beta = 1.0, 1.0
    if sigma.size == 0:
        # Zero features: the evidence does not depend on alpha; only the noise level is fitted.
        return alpha, N / (res_x2 + 1e-5)
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
        res2 = float(np.sum(x2 * (t / (t + sigma)) ** 2) + res_x2)
        alpha = gamma / (m2 + 1e-5)
        beta = (N - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= tol:
            break
    return alpha, beta


def _spectrum(f: np.ndarray, y: np.ndarray, n_classes: int):
    """Non-zero eigenvalues of F^T F and the label columns projected on the left singular vectors.

    Eigen-decomposes the smaller of the two Gram matrices: F^T F (D x D) when N >= D, F F^T (N x N) when N < D;
    both share their non-zero spectrum, and only U^T y is needed, never U itself.
    Returns sigma (r,), x (r, C'), the ids of the C' classes present in y and their counts.
    """
    N, D = f.shape
    counts = _class_counts(y, n_classes)
    present = np.flatnonzero(counts > 0)
    # LAPACK's MRRR driver (evr) is the fastest of the symmetric eigensolvers at D ~ 2000.
    if N >= D:
        ev, V = scipy.linalg.eigh(f.T @ f, driver="evr")
    else:
        ev, U = scipy.linalg.eigh(f @ f.T, driver="evr")
    # Relative cut-off (like matrix_rank): below it the direction is rounding noise, and dividing by its
    # singular value would turn that noise into a large fake x.
    keep = ev > max(ev.max(), 0.0) * max(N, D) * np.finfo(np.float64).eps
    sigma = ev[keep]
    if N >= D:
        fty = _class_sums(f, y, n_classes)[present].T  # F^T y_c, (D, C')
        x = (V[:, keep].T @ fty) / np.sqrt(sigma)[:, None]  # U^T y = Sigma^-1 V^T F^T y
    else:
        x = _class_sums(U[:, keep], y, n_classes)[present].T  # U^T y_c, (r, C')
    return sigma, x, present, counts[present]


@METRICS.register("logme", direction="higher", needs="features")
def logme(features, labels, n_classes: int, *, max_iter: int = 11, tol: float = 1e-3,
          thuml_compat: bool = False) -> float:
    r"""LogME, You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021,
    with the fixed-point solver of You et al., "Ranking and Tuning Pre-trained Models: A New Paradigm for
    Exploiting Model Hubs", JMLR 2022 (the default of thuml/LogME).

    For each target class c, the one-hot column :math:`y_c` is regressed on the features by Bayesian linear
    regression; the log evidence :math:`\log p(y_c | F, \alpha, \beta)` is maximised over the prior precision
    alpha and noise precision beta (fixed point from alpha = beta = 1, at most ``max_iter`` steps, stop when
    alpha/beta moves by less than ``tol`` relatively, as thuml). Score: mean over classes of evidence / N
    (higher is better). Features are used as given (float64, not centred), as in thuml.

    Differences from thuml/LogME, on purpose:
    - The evidence is evaluated at the posterior mean of the final (alpha, beta) (thuml reuses the previous
      step's). The two agree to ~1e-9 once the fixed point has converged; when the 11 steps run out (seen with
      N < D) they can differ by ~1e-4.
    - log|alpha I + beta F^T F| counts all D eigenvalues. thuml sums only over the min(N, D) singular values
      (or the numerical rank), which omits (D - r) log(alpha) when the features are rank deficient, in particular
      whenever N < D. For full-rank features with N >= D both agree; ``thuml_compat=True`` reproduces thuml's
      sum in the other cases too.
    - Only classes that occur in ``labels`` are averaged (thuml iterates over 0..max(label)).

    features (N, D), labels (N,) in [0, n_classes).
    """
    f, y = _features_and_labels(features, labels, n_classes)
    N, D = f.shape
    sigma, x, present, counts = _spectrum(f, y, n_classes)
    x2_all = x * x
    n_terms = D if not thuml_compat else (sigma.size if N > D else N)
    evidences = []
    for j in range(present.size):
        x2 = x2_all[:, j]
        # ||y_c||^2 = n_c for a 0/1 column; the rest of it lies outside the span of the features.
        res_x2 = max(float(counts[j]) - float(x2.sum()), 0.0)
        alpha, beta = _fixed_point(sigma, x2, res_x2, N, max_iter, tol)
        evidences.append(_log_evidence(sigma, x2, res_x2, N, D, alpha, beta, n_terms) / N)
    return float(np.mean(evidences))


# --------------------------------------------------------------------------------------------------------------
# Stronger published baselines (benchmark v2, issue 12) and two data-free references
# --------------------------------------------------------------------------------------------------------------


def _pca(f: np.ndarray, n_components: int | float, seed: int = 0) -> np.ndarray:
    """Centred features projected on their leading principal directions (sklearn's PCA, full SVD when small).
    ``n_components`` < 1 keeps that fraction of the variance, as sklearn reads it."""
    from sklearn.decomposition import PCA

    if isinstance(n_components, int):
        n_components = max(1, min(n_components, f.shape[0], f.shape[1]))
    return PCA(n_components=n_components, random_state=seed).fit_transform(f)


def _leep_from_posterior(post: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """LEEP with any posterior over latent "source classes" in place of the teacher's softmax."""
    joint = _class_sums(post, y, n_classes) / post.shape[0]  # (C, Z)
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz[None, :], out=np.zeros_like(joint), where=pz[None, :] > 0)
    eep = np.einsum("nz,nz->n", post, cond[y])
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


@METRICS.register("nleep", direction="higher", needs="features")
def nleep(features, labels, n_classes: int, *, variance: float = 0.8, components_per_class: int = 5,
          max_dims: int = 64, seed: int = 0) -> float:
    r"""NLEEP, Li et al., "Ranking Neural Checkpoints", CVPR 2021.

    PCA keeping ``variance`` (80 %) of the features' variance (capped at ``max_dims`` dimensions, which bounds
    the time at D = 1280), a diagonal Gaussian mixture with ``components_per_class`` × C components (at most
    N / 2, so that few-shot data is never one sample a component), fitted by EM (sklearn, seeded); its posterior
    over components replaces the teacher's softmax in LEEP: :math:`\frac1N\sum_i \log \sum_v \hat P(y_i|v)\,
    \pi(v|x_i)` (<= 0, higher is better). TencentARC/SFDA's ``NLEEP`` uses the same PCA and component ratio but a
    full-covariance mixture and drops the log; the paper keeps LEEP's log, as we do.

    features (N, D), labels (N,) in [0, n_classes).
    """
    from sklearn.mixture import GaussianMixture

    f, y = _features_and_labels(features, labels, n_classes)
    z = _pca(f, max_dims, seed)
    # The leading directions that explain ``variance`` of the total (trace of the covariance), at most max_dims.
    total = float(np.sum((f - f.mean(axis=0)) ** 2))
    explained = np.cumsum(np.sum(z * z, axis=0)) / max(total, 1e-300)
    z = z[:, : int(min(np.searchsorted(explained, variance - 1e-12) + 1, z.shape[1]))]
    k = int(max(1, min(components_per_class * len(np.unique(y)), f.shape[0] // 2)))
    gmm = GaussianMixture(n_components=k, covariance_type="diag", random_state=seed, max_iter=100).fit(z)
    return _leep_from_posterior(gmm.predict_proba(z), y, n_classes)


def _shrunk_cov(x: np.ndarray, shrinkage: float) -> np.ndarray:
    """ML covariance shrunk towards (its mean variance) × I by ``shrinkage`` in [0, 1]."""
    S = np.atleast_2d(np.cov(x.T, bias=True)) if x.shape[0] > 1 else np.zeros((x.shape[1], x.shape[1]))
    out = (1.0 - shrinkage) * S
    out[np.diag_indices_from(out)] += shrinkage * np.trace(S) / S.shape[0]
    return out


def _largest_eigenvalue(A: np.ndarray, iterations: int = 3) -> float:
    """Three steps of power iteration from the row sums, as TencentARC/SFDA's ``iterative_A``."""
    x = A.sum(axis=1)
    for _ in range(iterations):
        t = A @ x
        y = t / np.linalg.norm(t)
        t = A @ y
        x = t / np.linalg.norm(t)
    return float(x @ A @ y)


def _fda_proba(f: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float | None) -> tuple[np.ndarray, float]:
    """Regularised Fisher discriminant (shrinkage LDA) of SFDA: class posteriors on the training features and
    the shrinkage used (adaptive, exp(−5 λ_max(S_w)), when ``shrinkage`` is None)."""
    counts = _class_counts(y, n_classes).astype(np.float64)
    present = np.flatnonzero(counts > 0)
    priors = counts[present] / counts.sum()
    means = np.stack([f[y == c].mean(axis=0) for c in present])
    Sw = sum(p * _shrunk_cov(f[y == c], 0.0) for p, c in zip(priors, present))
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _largest_eigenvalue(Sw)), 1e-10)
    Sw_s = (1.0 - shrinkage) * Sw
    Sw_s[np.diag_indices_from(Sw_s)] += shrinkage * np.trace(Sw) / Sw.shape[0]
    # The reference takes the full generalised eigenbasis V of (S_b, S_w'): V V^T = S_w'^{-1}, so its classifier
    # is means · S_w'^{-1}, which a Cholesky solve gives without the eigenproblem.
    coef = scipy.linalg.cho_solve(scipy.linalg.cho_factor(Sw_s), means.T).T  # (C', D)
    scores = f @ coef.T - 0.5 * np.sum(means * coef, axis=1) + np.log(priors)
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((f.shape[0], n_classes))
    out[:, present] = p
    return out, shrinkage


@METRICS.register("sfda", direction="higher", needs="features")
def sfda(features, labels, n_classes: int) -> float:
    r"""SFDA, Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging
    Fisher Space", ECCV 2022 (reference code TencentARC/SFDA, ``SFDA_Score``).

    A regularised Fisher discriminant (within-class scatter shrunk towards a scaled identity with the adaptive
    strength exp(−5 λ_max), λ_max by three power-iteration steps) gives class posteriors; ConfMix moves each
    sample towards the mean of the *other* class means by one minus its softened confidence in its own class
    (p' = softmax(p), as the reference does); a second discriminant with the same shrinkage is fitted on the
    mixed features; score = mean posterior of the true class (in (0, 1], higher is better; no log, as the paper).

    features (N, D), labels (N,) in [0, n_classes).
    """
    f, y = _features_and_labels(features, labels, n_classes)
    f = f.copy()
    p, shrink = _fda_proba(f, y, n_classes, None)
    present = np.flatnonzero(_class_counts(y, n_classes) > 0)
    if present.size < 2:
        return float("nan")
    soft = np.exp(p[:, present])
    soft /= soft.sum(axis=1, keepdims=True)
    means = np.stack([f[y == c].mean(axis=0) for c in present])
    for j, c in enumerate(present):
        sel = y == c
        others = (means.sum(axis=0) - means[j]) / (present.size - 1)
        conf = soft[sel, j][:, None]
        f[sel] = conf * f[sel] + (1.0 - conf) * others
    p2, _ = _fda_proba(f, y, n_classes, shrink)
    return float(np.mean(p2[np.arange(y.size), y]))


def ncti_terms(features, labels, n_classes: int, *, n_dims: int = 64, seed: int = 0) -> tuple[float, float, float]:
    r"""The three raw terms of NCTI, Wang et al., "How Far Pre-trained Models Are from Neural Collapse on the
    Target Dataset Informs their Transferability", ICCV 2023 (reference code BUserName/NCTI, ``NCTI_Score``).

    PCA to ``n_dims`` (64) dimensions; LDA (sklearn, eigen solver) with shrinkage exp(−Σ of the 32 largest PCA
    variances) (the SVD solver when that underflows to 1e-10); returns (nuclear norm of the centred LDA
    projection, mean LDA probability of the true class, log Σ_c nuclear norm of class c's predicted
    probabilities). :func:`ncti_combine` turns the terms of all candidate teachers into scores.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    f, y = _features_and_labels(features, labels, n_classes)
    present = np.unique(y)
    if present.size < 2:
        return float("nan"), float("nan"), float("nan")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=max(1, min(n_dims, f.shape[0], f.shape[1])), random_state=seed)
    x = pca.fit_transform(f)
    temp = max(math.exp(-float(pca.explained_variance_[:32].sum())), 1e-10)
    lda = (LinearDiscriminantAnalysis(solver="svd") if temp == 1e-10
           else LinearDiscriminantAnalysis(solver="eigen", shrinkage=temp))
    low = lda.fit_transform(x, y)
    low = low - low.mean(axis=0, keepdims=True)
    nuc_all = float(np.linalg.norm(low, ord="nuc"))
    pred = lda.predict_proba(x)  # columns: present classes, in order
    col = np.searchsorted(present, y)
    true_prob = float(np.mean(pred[np.arange(y.size), col]))
    class_nuc = sum(float(np.linalg.norm(pred[y == c], ord="nuc")) for c in present)
    return nuc_all, true_prob, float(math.log(class_nuc))


def ncti_combine(terms: Sequence[Sequence[float]]) -> list[float]:
    """NCTI scores of a set of candidate teachers from their :func:`ncti_terms`: each term min-max normalised
    across the candidates, score = nuclear + probability − log class nuclear (higher is better). A term equal for
    all candidates contributes 0 (the reference would divide by zero)."""
    t = np.asarray(terms, dtype=np.float64).reshape(len(terms), 3)
    lo, span = np.nanmin(t, axis=0), np.nanmax(t, axis=0) - np.nanmin(t, axis=0)
    norm = np.divide(t - lo, span, out=np.zeros_like(t), where=span > 0)
    return (norm[:, 0] + norm[:, 1] - norm[:, 2]).tolist()


@METRICS.register("gbc", direction="higher", needs="features")
def gbc(features, labels, n_classes: int, *, n_dims: int = 64, seed: int = 0, min_var: float = 1e-4) -> float:
    r"""GBC, Pándy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022
    (reference code google-research ``stable_transfer/transferability/gbc.py``, diagonal Gaussians).

    Features PCA-reduced to ``n_dims`` (64, the paper's choice); each class a diagonal Gaussian (ML mean and
    variance, floored at ``min_var`` = 1e-4 as the reference does); Bhattacharyya distance
    :math:`D_B = \frac18 \sum_d \frac{(\mu_{id} - \mu_{jd})^2}{\sigma_d} + \frac12 \sum_d \log \frac{\sigma_d}
    {\sqrt{\sigma_{id}\sigma_{jd}}}`, :math:`\sigma = (\sigma_i + \sigma_j)/2`; score
    :math:`-\sum_{i \ne j} e^{-D_B(i, j)}` over ordered pairs, as the reference (<= 0; higher is better).
    """
    f, y = _features_and_labels(features, labels, n_classes)
    z = _pca(f, n_dims, seed)
    present = np.unique(y)
    mu = np.stack([z[y == c].mean(axis=0) for c in present])
    var = np.maximum(np.stack([z[y == c].var(axis=0) for c in present]), min_var)
    total = 0.0
    for i in range(present.size):
        for j in range(present.size):
            if i != j:
                s = 0.5 * (var[i] + var[j])
                db = 0.125 * np.sum((mu[i] - mu[j]) ** 2 / s) + 0.5 * np.sum(
                    np.log(s) - 0.5 * (np.log(var[i]) + np.log(var[j])))
                total += math.exp(-db)
    return -total


def _coding_rate(z: np.ndarray, eps: float) -> float:
    """½ logdet(I + ZᵀZ / (n ε)), through the smaller Gram matrix (Sylvester's determinant identity)."""
    n = z.shape[0]
    g = z.T @ z if z.shape[1] <= n else z @ z.T
    sign, logdet = np.linalg.slogdet(np.eye(g.shape[0]) + g / (n * eps))
    return 0.5 * float(logdet)


@METRICS.register("transrate", direction="higher", needs="features")
def transrate(features, labels, n_classes: int, *, eps: float = 1e-4) -> float:
    r"""TransRate, Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022 (as the authors' code
    and ``tllib.ranking.transrate``): on centred features,
    :math:`R(Z) - \frac1C \sum_c R(Z_c)` with the coding rate
    :math:`R(Z) = \frac12 \log\det(I + Z^\top Z / (n\epsilon))`, ε = 1e-4, n the rows of that Z (higher is
    better). Classes absent from ``labels`` count with R = 0, as the reference loops over 0..max(label).
    """
    f, y = _features_and_labels(features, labels, n_classes)
    f = f - f.mean(axis=0, keepdims=True)
    K = int(y.max()) + 1
    rc = sum(_coding_rate(f[y == c], eps) for c in range(K) if np.any(y == c))
    return _coding_rate(f, eps) - rc / K


@METRICS.register("params", direction="higher", needs="teacher")
def param_count(teacher) -> float:
    """Data-free reference: the teacher's number of parameters ("bigger is better")."""
    n = getattr(teacher, "num_params", 0) or 0
    return float(n) if n > 0 else float("nan")


@METRICS.register("source-acc", direction="higher", needs="teacher")
def source_accuracy(teacher) -> float:
    """Data-free reference: the teacher's own validation accuracy on its source task, from its metadata
    (``val_accuracy``); NaN (ranked last) when it has none."""
    v = (getattr(teacher, "metadata", None) or {}).get("val_accuracy")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


@METRICS.register("ncti", direction="higher", needs="features")
def ncti(features, labels, n_classes: int) -> float:
    """Per teacher, the unnormalised sum of :func:`ncti_terms`; :func:`ncti_combine` over the candidate teachers
    gives the published score (the benchmark uses that)."""
    a, b, c = ncti_terms(features, labels, n_classes)
    return a + b - c


def resolve_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """``"all"``, a comma list or an iterable of names → validated list, order kept (first is primary)."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    out: list[str] = []
    for m in metrics:
        names = list(METRICS) if m == "all" else [m]
        for n in names:
            if n not in METRICS:
                raise ValueError(f"unknown metric {n!r}; choose from {', '.join(METRICS)} or 'all'")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no metric given")
    return out
