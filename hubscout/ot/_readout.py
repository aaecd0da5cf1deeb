"""Reading a plan or a cost matrix out as class names: correspondences, nearest classes, the plan's summary."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hubscout.ot._validation import _as_matrix


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
