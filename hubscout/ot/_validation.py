"""Input checks and class-wise sums shared by the OT code and hubscout.scores."""
from __future__ import annotations

import numpy as np


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
