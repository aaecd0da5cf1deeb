"""Rank the teachers of a repository for a labelled target dataset.

Each teacher makes one batched pass over the target set (or none, when its outputs are cached); every requested
metric is computed from those outputs. OT relatedness (ours) is the primary metric by default: the transport
cost from the teacher's predictions to the target labels, lower is better, with its transport plan read out as
class correspondences.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Protocol, Sequence

import numpy as np

from hubscout.data import Dataset
from hubscout.extract import OutputsCache, TeacherOutputs, extract_group, input_groups
from hubscout.ot import DEFAULT_COST
from hubscout.scores import DEFAULT_METRICS, METRICS, resolve_metrics
from hubscout.teachers import Repository, Teacher, TeacherNotFound

#: The registered metrics in the order "all" lists them (read from the registry, hubscout.scores.METRICS).
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
__all__ = ["METRIC_NAMES", "RankEntry", "Ranking", "ScoreStore", "ShortlistStep", "SpecShortlist", "rank",
           "resolve_metrics", "score_teacher", "score_teachers", "order_entries", "select_teachers",
           "relatedness_scores", "weights_from_scores", "weigh_teachers"]

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
    forward_s: float = 0.0  # outputs: the forward pass, its share of the input conversion, or the cache read
    input_s: float = 0.0  # of which converting images to model inputs (resize, normalise)
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
    # How many entries came whole from a ScoreStore (not part of the result: the worker logs it).
    n_stored: int = 0

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
                    "input_s": round(e.input_s, 4),
                    "score_s": round(e.score_s, 4),
                }
                for e in self.entries
            ],
        }


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
    """All ``metrics`` for one teacher's outputs; a metric with a readout (OT) also fills in what it reads out
    (the plan and class correspondences)."""
    inputs = dict(probs=outputs.probs, features=outputs.features, classifier_weight=outputs.classifier_weight,
                  labels=dataset.labels, n_classes=dataset.num_classes)
    scores: dict[str, float] = {}
    entry = RankEntry(teacher.id, teacher.name, scores)
    for m in metrics:
        metric = METRICS[m]
        result = metric.compute(**inputs, cost=cost, teacher=teacher)
        scores[m] = float(metric.value(result))
        if metric.readout is not None:
            for name, value in metric.readout(result, teacher_labels=teacher.labels, target_labels=dataset.classes,
                                              cost=cost, k=n_correspondences, **inputs).items():
                setattr(entry, name, value)
    return entry


def order_entries(entries: list[RankEntry], metric: str) -> list[RankEntry]:
    sign = 1.0 if METRICS[metric].direction == "lower" else -1.0
    # NaN scores (a degenerate metric on tiny data) sort last rather than first.
    ordered = sorted(entries, key=lambda e: (np.isnan(e.scores[metric]), sign * np.nan_to_num(e.scores[metric])))
    for i, e in enumerate(ordered, 1):
        e.rank = i
    return ordered


class ScoreStore(Protocol):
    """Where scores are kept between rankings, keyed by (``Teacher.outputs_key``, dataset hash, metric, cost): a
    teacher whose every requested score is stored is neither run nor scored again."""

    def lookup(self, teachers: Sequence[Teacher], dataset_sha256: str, metrics: list[str],
               cost: str) -> dict[str, RankEntry]: ...

    def record(self, entries: Sequence[RankEntry], teacher_sha: dict[str, str], dataset_sha256: str,
               cost: str) -> int: ...


class ShortlistStep(Protocol):
    """Picks, from their specifications, the teachers worth a forward pass."""

    def candidates(self, teacher_ids: Sequence[str] | None) -> list[str]:
        """The ids the shortlist chooses from: ``teacher_ids``, or all the teachers there are."""

    def __call__(self, dataset: Dataset, candidates: list[str], k: int,
                 method: str | None = None) -> tuple[list[str], dict[str, Any]]:
        """(the ids to run, in candidate order; the shortlist's description, ``hubscout.spec.shortlist_plan``), the
        specifications scored by ``method`` (the emulation of the metric the ranking orders by)."""


class SpecShortlist:
    """The library's shortlist step: specifications ``given`` or read from the repository, the target embedded
    by the shared reference model."""

    def __init__(self, repo: Repository, specifications: Sequence[Any] | None = None, embedder: Any = None,
                 device=None):
        self.repo, self.specifications, self.embedder, self.device = repo, specifications, embedder, device
        self._teachers: dict[str, Teacher] = {}

    def candidates(self, teacher_ids: Sequence[str] | None) -> list[str]:
        self._teachers = {t.id: t for t in select_teachers(self.repo, teacher_ids)}
        return list(self._teachers)

    def __call__(self, dataset: Dataset, candidates: list[str], k: int,
                 method: str | None = None) -> tuple[list[str], dict[str, Any]]:
        from hubscout import spec as hspec

        t0 = time.perf_counter()
        by_id = {s.teacher_id: s for s in (self.specifications or [])}
        specs = []
        for tid in candidates:
            teacher = self._teachers.get(tid) or self.repo.get(tid)
            s = by_id.get(tid) if self.specifications is not None else hspec.load_specification(self.repo, tid)
            if s is not None and s.is_current(teacher.weights_sha256):
                specs.append(s)
        load_s = time.perf_counter() - t0
        embedder = self.embedder or hspec.ReferenceEmbedder(device=self.device)
        target = hspec.embed_target(dataset, embedder, hspec.repo_cache_dir(self.repo))
        run, info = hspec.shortlist_plan(candidates, hspec.SpecIndex.build(specs), target, k, method)
        info["load_specs_s"] = round(load_s, 4)
        return run, info


def rank(dataset: Dataset, repo: Repository, *, metrics: str | Iterable[str] | None = DEFAULT_METRICS,
         teacher_ids: Sequence[str] | None = None, top_k: int | None = None, cache: OutputsCache | None = None,
         cost: str = DEFAULT_COST, device=None, batch_size: int = 64, show_progress: bool = False,
         on_progress: ProgressFn | None = None, shortlist_k: int | None = None,
         specifications: Sequence[Any] | None = None, embedder: Any = None, scores: ScoreStore | None = None,
         shortlist: ShortlistStep | None = None,
         compute_lock: Callable[[], ContextManager[Any]] | None = None,
         exhaustive_max: int | None = None) -> Ranking:
    """Rank ``repo``'s teachers (or ``teacher_ids``) for ``dataset`` by ``metrics`` (the first one orders).

    With ``shortlist_k``, teachers are first scored from their specifications (``shortlist``; by default
    :class:`SpecShortlist`: ``specifications`` given, or read from the repository, against the target embedded
    once by ``embedder``) and only the best ``shortlist_k`` make a forward pass, with every teacher its
    specification cannot rule out (``hubscout.spec.shortlist``). Teachers without a specification are kept, since
    nothing rules them out. At most ``exhaustive_max`` candidates (default ``hubscout.spec.EXHAUSTIVE_MAX_TEACHERS``)
    are ranked exhaustively all the same: the shortlist would save less than it costs. ``shortlist_k`` 0 or None:
    exhaustive.

    With ``scores``, the teachers whose scores are stored are not run again; the others are scored (their outputs
    through ``cache``) and recorded. ``compute_lock()``, held while computing, is one per dataset: of two identical
    rankings running at once, the second waits and then finds everything scored, so the forward passes run once.
    """
    t0 = time.perf_counter()
    metric_list = resolve_metrics(metrics)
    progress = on_progress or (lambda frac, msg: None)
    shortlist_info = None
    lo = 0.0
    if shortlist_k:
        from hubscout.spec import EXHAUSTIVE_MAX_TEACHERS, exhaustive_info, method_for

        limit = EXHAUSTIVE_MAX_TEACHERS if exhaustive_max is None else exhaustive_max
        step = shortlist or SpecShortlist(repo, specifications, embedder, device)
        candidates = step.candidates(teacher_ids)
        if len(candidates) > max(shortlist_k, limit):
            progress(0.01, f"shortlisting {len(candidates)} teachers by specification")
            # The shortlist emulates the metric that orders (H-score by default, OT when asked), so that it keeps
            # the teacher this ranking would put first.
            method = method_for(metric_list[0], cost)
            teacher_ids, shortlist_info = step(dataset, candidates, shortlist_k, method)
            progress(0.05, f"{len(teacher_ids)} of {len(candidates)} teachers to run")
            lo = 0.05
        else:
            shortlist_info = exhaustive_info(len(candidates), limit)
    teachers = select_teachers(repo, teacher_ids)
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be at least 1")
    stored = scores.lookup(teachers, dataset.sha256, metric_list, cost) if scores is not None else {}
    missing = [t for t in teachers if t.id not in stored]
    fresh: list[RankEntry] = []
    excluded: list[dict[str, str]] = []
    if missing:
        with compute_lock() if compute_lock is not None else nullcontext():
            if scores is not None:  # scored meanwhile by the ranking that held the lock?
                stored.update(scores.lookup(missing, dataset.sha256, metric_list, cost))
                missing = [t for t in teachers if t.id not in stored]
            if missing:
                fresh, excluded = score_teachers(missing, dataset, metric_list, cache=cache, cost=cost,
                                                 device=device, batch_size=batch_size, show_progress=show_progress,
                                                 on_progress=lambda f, m: progress(lo + (1 - lo) * f, m))
                if scores is not None:
                    scores.record(fresh, {t.id: t.outputs_key for t in missing}, dataset.sha256, cost)
    known = [stored[t.id] for t in teachers if t.id in stored]
    ordered = order_entries(known + fresh, metric_list[0])
    if top_k is not None:
        ordered = ordered[:top_k]
    return Ranking(dataset.sha256, dataset.classes, len(dataset), metric_list, ordered, cost,
                   time.perf_counter() - t0, shortlist_info, excluded=excluded, n_stored=len(known))


def score_teachers(teachers: Sequence[Teacher], dataset: Dataset, metrics: Sequence[str], *,
                   cache: OutputsCache | None = None, cost: str = DEFAULT_COST, device=None, batch_size: int = 64,
                   show_progress: bool = False, on_progress: ProgressFn | None = None
                   ) -> tuple[list[RankEntry], list[dict[str, str]]]:
    """One forward pass (or cached outputs) per teacher, then every metric on them: (the entries in the order of
    ``teachers``, not ranked; the teachers left out, each {"teacher_id", "name", "reason"}). A teacher whose outputs are not finite (NaN, inf)
    has no score to rank by, and must not fail the ranking of the others."""
    scored: dict[str, RankEntry] = {}
    excluded: list[dict[str, str]] = []
    bar = None
    if show_progress:
        from hubscout.progress import progress_bar

        bar = progress_bar(total=len(teachers), desc="teachers", unit="teacher")

    def progress(done: float, msg: str) -> None:
        if on_progress is not None:
            on_progress(done / len(teachers), msg)

    def score(teacher: Teacher, outputs: TeacherOutputs, cached: bool, forward_s: float, input_s: float) -> None:
        t2 = time.perf_counter()
        bad = non_finite_outputs(outputs)
        if bad:
            excluded.append({"teacher_id": teacher.id, "name": teacher.name,
                             "reason": f"its {bad} on this dataset are not finite (NaN or inf)"})
        else:
            entry = score_teacher(outputs, teacher, dataset, metrics, cost=cost)
            entry.cached, entry.forward_s, entry.input_s = cached, forward_s, input_s
            entry.score_s = time.perf_counter() - t2
            scored[teacher.id] = entry
        progress(len(scored) + len(excluded), f"scored {teacher.id}")
        if bar is not None:
            bar.update(1)

    # Teachers that share an input config run side by side over the data: each batch is resized and normalised
    # once for all of them (hubscout.extract.extract_group).
    for group in input_groups(teachers):
        todo = []
        for teacher in group:
            t1 = time.perf_counter()
            hit = cache.get(teacher.outputs_key, dataset.sha256) if cache is not None else None
            if hit is not None:
                score(teacher, hit, True, time.perf_counter() - t1, 0.0)
            else:
                todo.append(teacher)
        if not todo:
            continue
        before = len(scored) + len(excluded)
        res = extract_group(todo, dataset, device=device, batch_size=batch_size, show_progress=show_progress,
                            on_progress=lambda j, frac, msg: progress(before + frac * len(todo), msg))
        for teacher, outputs, fwd in zip(todo, res.outputs, res.forward_s):
            if cache is not None:
                cache.put(teacher.outputs_key, dataset.sha256, outputs)
            # The shared input conversion is split evenly between the group's teachers.
            share = res.input_s / len(todo)
            score(teacher, outputs, False, fwd + share, share)
        del res
    if bar is not None:
        bar.close()
    return [scored[t.id] for t in teachers if t.id in scored], excluded


def non_finite_outputs(outputs: TeacherOutputs) -> str | None:
    """Which of a teacher's outputs hold NaN or inf ("probabilities", "features"), or None if all are finite."""
    for name, a in (("probabilities", outputs.probs), ("features", outputs.features)):
        if a is not None and not np.isfinite(np.asarray(a)).all():
            return name
    return None


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


def weigh_teachers(dataset: Dataset, repo: Repository, teacher_ids: Sequence[str], *, ce_only: bool = False,
                   cache: OutputsCache | None = None, device=None) -> tuple[list[float] | None, dict[str, float] | None]:
    """The mixture of several teachers in a distillation (softmax of their OT costs, in the order of
    ``teacher_ids``) and their relatedness (teacher id → OT cost); (None, None) for one teacher or a CE-only
    student, which mix nothing."""
    if len(teacher_ids) < 2 or ce_only:
        return None, None
    scores = relatedness_scores(dataset, repo, teacher_ids, cache=cache, device=device)
    return weights_from_scores(scores), dict(zip(teacher_ids, scores))
