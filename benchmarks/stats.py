"""Statistics of benchmark v2 (``benchmarks/PROTOCOL.md`` §5): per-task ranking quality, bootstrap intervals
over tasks and paired differences against the product's default."""
from __future__ import annotations

from typing import Sequence

import numpy as np

TIE = 1e-9


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    """Non-finite scores (a metric that failed on a teacher) rank below every finite one."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if not ok.any():
        return np.zeros_like(s)
    return np.where(ok, s, s[ok].min() - 1.0)


def weighted_tau(scores: Sequence[float], acc: Sequence[float]) -> float:
    """scipy's weighted Kendall τ (hyperbolic weigher, top ranks weighted more); NaN when either side is constant."""
    from scipy.stats import weightedtau

    s, a = _finite_scores(np.asarray(scores)), np.asarray(acc, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(s) == 0:
        return float("nan")
    return float(weightedtau(s, a).statistic)


def top1_and_regret(scores: Sequence[float], acc: Sequence[float]) -> tuple[float, float]:
    """(1 if the metric's first teacher has the best accuracy, ties for best accuracy counting as hits; best − its
    accuracy, in accuracy points). Several teachers tied for the top score (a saturated metric): the expectation
    over them, as if the tie were broken at random."""
    s, a = _finite_scores(np.asarray(scores)), np.asarray(acc, dtype=np.float64)
    top = np.flatnonzero(s >= s.max() - 1e-12 * max(1.0, abs(s.max())))
    return float(np.mean(a[top] >= a.max() - 1e-12)), float(100.0 * np.mean(a.max() - a[top]))


def task_quality(scores: Sequence[float], acc: Sequence[float]) -> dict[str, float]:
    hit, regret = top1_and_regret(scores, acc)
    return {"tau_w": weighted_tau(scores, acc), "top1_hit": hit, "regret": regret}


def random_quality(acc: Sequence[float], n: int = 500, seed: int = 0) -> dict[str, float]:
    """Expected quality of a uniformly random ranking (Monte Carlo over ``n`` permutations)."""
    rng = np.random.default_rng(seed)
    runs = [task_quality(rng.permutation(len(acc)).astype(float), acc) for _ in range(n)]
    return {k: float(np.nanmean([r[k] for r in runs])) for k in runs[0]}


def bootstrap_ci(values: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean over tasks (NaN values left out); [nan, nan] without data."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return [float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))]


def paired(values: Sequence[float], default: Sequence[float], lower_is_better: bool = False,
           n_boot: int = 10_000, seed: int = 0) -> dict[str, object]:
    """Per task ``values − default`` (pairs with a NaN left out): mean, bootstrap interval, and wins / ties /
    losses of the metric against the default (|difference| ≤ 1e-9 a tie; with ``lower_is_better`` a win is a
    negative difference, e.g. regret)."""
    d = np.asarray([x - y for x, y in zip(values, default) if np.isfinite(x) and np.isfinite(y)], dtype=np.float64)
    sign = -1.0 if lower_is_better else 1.0
    return {"mean": float(d.mean()) if d.size else float("nan"), "ci": bootstrap_ci(d, n_boot, seed),
            "wins": int(np.sum(sign * d > TIE)), "ties": int(np.sum(np.abs(d) <= TIE)),
            "losses": int(np.sum(sign * d < -TIE))}


def summarise(per_task: list[dict[str, float]], default: list[dict[str, float]]) -> dict[str, object]:
    """The report's ``summary[half][ground_truth][metric]`` entry from per-task qualities of a metric and of the
    default (same tasks, same order)."""
    out: dict[str, object] = {"n_tasks": len(per_task)}
    for k in ("tau_w", "top1_hit", "regret"):
        vals = [q[k] for q in per_task]
        finite = [v for v in vals if np.isfinite(v)]
        out[k] = float(np.mean(finite)) if finite else float("nan")
        out[f"{k}_ci"] = bootstrap_ci(vals)
    out["n_tau_nan"] = int(sum(1 for q in per_task if not np.isfinite(q["tau_w"])))
    out["paired_vs_default"] = paired([q["tau_w"] for q in per_task], [q["tau_w"] for q in default])
    out["paired_regret_vs_default"] = paired([q["regret"] for q in per_task], [q["regret"] for q in default],
                                             lower_is_better=True)
    return out
