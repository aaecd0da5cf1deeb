"""Rank the teachers of a repository for a labelled target dataset.

Each teacher makes one batched pass over the target set (or none, when its outputs are cached); every requested
metric is computed from those outputs. OT relatedness (ours) is the primary metric by default: the transport
cost from the teacher's predictions to the target labels, lower is better, with its transport plan read out as
class correspondences.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hubscout import ot as hot
from hubscout.ot import DEFAULT_COST
from hubscout.data import Dataset
from hubscout.extract import OutputsCache, TeacherOutputs, outputs_for
from hubscout.scores import METRICS
from hubscout.teachers import Repository, Teacher, TeacherNotFound

METRIC_NAMES: tuple[str, ...] = ("ot", "leep", "nce", "hscore", "logme")

ProgressFn = Callable[[float, str], None]


@dataclass
class RankEntry:
    teacher_id: str
    name: str
    scores: dict[str, float]
    correspondences: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    plan: np.ndarray | None = None
    # Per target class, the teacher classes nearest under the bridge cost (hubscout.ot.BRIDGE_COST, nearest_classes).
    matches: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    # ``hubscout.ot.plan_summary`` of the plan: what a heatmap shows, and what the JSON form carries.
    plan_summary: dict[str, Any] | None = None
    cached: bool = False
    forward_s: float = 0.0
    score_s: float = 0.0
    rank: int = 0


@dataclass
class Ranking:
    dataset_sha256: str
    classes: list[str]
    n_samples: int
    metrics: list[str]
    entries: list[RankEntry]
    cost: str = DEFAULT_COST
    elapsed_s: float = 0.0
    shortlist: dict[str, Any] | None = None
    # Teachers left out, each {"teacher_id", "name", "reason"}: one whose outputs are not finite (NaN, inf) has
    # no score to rank by, and must not fail the ranking of the others.
    excluded: list[dict[str, str]] = field(default_factory=list)

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def best(self) -> RankEntry:
        return self.entries[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_sha256": self.dataset_sha256,
            "classes": self.classes,
            "n_samples": self.n_samples,
            "metrics": self.metrics,
            "primary": self.primary,
            "cost": self.cost,
            "directions": {m: METRICS[m].direction for m in self.metrics},
            "elapsed_s": round(self.elapsed_s, 4),
            "shortlist": self.shortlist,
            "excluded": list(self.excluded),
            "teachers": [
                {
                    "rank": e.rank,
                    "teacher_id": e.teacher_id,
                    "name": e.name,
                    "scores": {m: {"value": float(v), "direction": METRICS[m].direction} for m, v in e.scores.items()},
                    "correspondences": {c: [[t, round(float(s), 4)] for t, s in pairs]
                                        for c, pairs in e.correspondences.items()},
                    "matches": {c: [[t, round(float(s), 4)] for t, s in pairs] for c, pairs in e.matches.items()},
                    "plan": e.plan_summary,
                    "cached": e.cached,
                    "forward_s": round(e.forward_s, 4),
                    "score_s": round(e.score_s, 4),
                }
                for e in self.entries
            ],
        }


def resolve_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """``"all"``, a comma list or an iterable of names → validated list, order kept (first is primary)."""
    if metrics is None:
        return ["ot"]
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    out: list[str] = []
    for m in metrics:
        names = list(METRIC_NAMES) if m == "all" else [m]
        for n in names:
            if n not in METRICS:
                raise ValueError(f"unknown metric {n!r}; choose from {', '.join(METRIC_NAMES)} or 'all'")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no metric given")
    return out


def select_teachers(repo: Repository, teacher_ids: Sequence[str] | None) -> list[Teacher]:
    if not teacher_ids:
        teachers = repo.list()
        if not teachers:
            raise ValueError(f"the repository at {repo.root} holds no teacher")
        return teachers
    missing = [t for t in teacher_ids if t not in repo]
    if missing:
        raise TeacherNotFound(", ".join(missing))
    return [repo.get(t) for t in dict.fromkeys(teacher_ids)]


def score_teacher(outputs: TeacherOutputs, teacher: Teacher, dataset: Dataset, metrics: Sequence[str],
                  cost: str = DEFAULT_COST, n_correspondences: int = 3) -> RankEntry:
    """All ``metrics`` for one teacher's outputs; OT also yields the plan and class correspondences."""
    probs = outputs.probs
    labels, n = dataset.labels, dataset.num_classes
    scores: dict[str, float] = {}
    entry = RankEntry(teacher.id, teacher.name, scores)
    for m in metrics:
        if m == "ot":
            M = hot.cost_matrix(cost, classifier_weight=outputs.classifier_weight, features=outputs.features,
                                probs=probs, labels=labels, n_classes=n)
            res = hot.ot_relatedness(probs, labels, n, M)
            scores[m] = float(res.score)
            entry.plan = res.plan
            entry.correspondences = hot.top_correspondences(res.plan, teacher.labels, dataset.classes,
                                                            k=n_correspondences)
            bridge = M if cost == hot.BRIDGE_COST else hot.cost_matrix(
                hot.BRIDGE_COST, classifier_weight=outputs.classifier_weight, features=outputs.features,
                labels=labels, n_classes=n)
            entry.matches = hot.nearest_classes(bridge, teacher.labels, dataset.classes, k=n_correspondences)
            entry.plan_summary = hot.plan_summary(res.plan, teacher.labels, dataset.classes)
        else:
            scores[m] = float(METRICS[m].fn(probs=probs, features=outputs.features,
                                            classifier_weight=outputs.classifier_weight, labels=labels,
                                            n_classes=n))
    return entry


def order_entries(entries: list[RankEntry], metric: str) -> list[RankEntry]:
    sign = 1.0 if METRICS[metric].direction == "lower" else -1.0
    # NaN scores (a degenerate metric on tiny data) sort last rather than first.
    ordered = sorted(entries, key=lambda e: (np.isnan(e.scores[metric]), sign * np.nan_to_num(e.scores[metric])))
    for i, e in enumerate(ordered, 1):
        e.rank = i
    return ordered


def rank(dataset: Dataset, repo: Repository, *, metrics: str | Iterable[str] | None = ("ot",),
         teacher_ids: Sequence[str] | None = None, top_k: int | None = None, cache: OutputsCache | None = None,
         cost: str = DEFAULT_COST, device=None, batch_size: int = 64, show_progress: bool = False,
         on_progress: ProgressFn | None = None, shortlist_k: int | None = None,
         specifications: Sequence[Any] | None = None, embedder: Any = None) -> Ranking:
    """Rank ``repo``'s teachers (or ``teacher_ids``) for ``dataset`` by ``metrics`` (the first one orders).

    With ``shortlist_k``, teachers are first scored from their specifications (``hubscout.spec``; given, or read
    from the repository) against the target embedded once by the shared reference model, and only the best
    ``shortlist_k`` make a forward pass. Teachers without a specification are kept, since nothing rules them out.
    """
    t0 = time.perf_counter()
    metric_list = resolve_metrics(metrics)
    teachers = select_teachers(repo, teacher_ids)
    shortlist_info = None
    if shortlist_k is not None and len(teachers) > shortlist_k:
        teachers, shortlist_info = _shortlist(dataset, repo, teachers, shortlist_k, specifications, embedder, device)
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be at least 1")
    entries, excluded = [], []
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(teachers), desc="teachers", unit="teacher")
    for i, teacher in enumerate(teachers):
        def sub(frac: float, msg: str, i: int = i) -> None:
            if on_progress is not None:
                on_progress((i + frac) / len(teachers), msg)

        t1 = time.perf_counter()
        outputs, cached = outputs_for(teacher, dataset, cache, device=device, batch_size=batch_size,
                                      show_progress=show_progress, on_progress=sub)
        t2 = time.perf_counter()
        bad = non_finite_outputs(outputs)
        if bad:
            excluded.append({"teacher_id": teacher.id, "name": teacher.name,
                             "reason": f"its {bad} on this dataset are not finite (NaN or inf)"})
        else:
            entry = score_teacher(outputs, teacher, dataset, metric_list, cost=cost)
            entry.cached, entry.forward_s, entry.score_s = cached, t2 - t1, time.perf_counter() - t2
            entries.append(entry)
        sub(1.0, f"scored {teacher.id}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    ordered = order_entries(entries, metric_list[0])
    if top_k is not None:
        ordered = ordered[:top_k]
    return Ranking(dataset.sha256, dataset.classes, len(dataset), metric_list, ordered, cost,
                   time.perf_counter() - t0, shortlist_info, excluded)


def non_finite_outputs(outputs: TeacherOutputs) -> str | None:
    """Which of a teacher's outputs hold NaN or inf ("probabilities", "features"), or None if all are finite."""
    for name, a in (("probabilities", outputs.probs), ("features", outputs.features)):
        if a is not None and not np.isfinite(np.asarray(a)).all():
            return name
    return None


def _shortlist(dataset: Dataset, repo: Repository, teachers: list[Teacher], k: int, specifications, embedder,
               device) -> tuple[list[Teacher], dict[str, Any]]:
    from hubscout import spec as hspec

    t0 = time.perf_counter()
    by_id = {s.teacher_id: s for s in (specifications or [])}
    specs = []
    for t in teachers:
        s = by_id.get(t.id) if specifications is not None else hspec.load_specification(repo, t.id)
        if s is not None and s.is_current(t.weights_sha256):
            specs.append(s)
    load_s = time.perf_counter() - t0
    embedder = embedder or hspec.ReferenceEmbedder(device=device)
    run, info = hspec.plan([t.id for t in teachers], hspec.SpecIndex.build(specs),
                           hspec.embed_target(dataset, embedder), k)
    info["load_specs_s"] = round(load_s, 4)
    keep = set(run)
    return [t for t in teachers if t.id in keep], info


def weights_from_scores(scores: Sequence[float], temperature: float = 0.05) -> list[float]:
    """Softmax of the negative OT costs: a clearly closer teacher dominates, near ties share the weight."""
    s = -np.asarray(scores, dtype=np.float64) / temperature
    w = np.exp(s - s.max())
    return (w / w.sum()).tolist()


def relatedness_scores(dataset: Dataset, repo: Repository, teacher_ids: Sequence[str], *,
                       cache: OutputsCache | None = None, device=None) -> list[float]:
    """The OT relatedness (transport cost, lower is closer) of each teacher, in the order of ``teacher_ids``."""
    ranking = rank(dataset, repo, metrics=["ot"], teacher_ids=teacher_ids, cache=cache, device=device)
    by_id = {e.teacher_id: e.scores["ot"] for e in ranking.entries}
    return [float(by_id[t]) for t in teacher_ids]


def relatedness_weights(dataset: Dataset, repo: Repository, teacher_ids: Sequence[str], *,
                        cache: OutputsCache | None = None, temperature: float = 0.05, device=None) -> list[float]:
    """Weights for several teachers in distillation, in the order of ``teacher_ids``, from their OT costs."""
    scores = relatedness_scores(dataset, repo, teacher_ids, cache=cache, device=device)
    return weights_from_scores(scores, temperature)
