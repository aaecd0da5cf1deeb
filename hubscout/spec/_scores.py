"""Scoring every teacher from its specification alone against an embedded target (lower is better)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hubscout.ot import DEFAULT_COST
from hubscout.registry import Registry
from hubscout.scores import DEFAULT_METRIC
from hubscout.spec._format import PROBE_SOURCE, Specification, TargetEmbedding
from hubscout.spec._reference import REFERENCE_DIM


# The exact OT's cost temperature (``cost_prototype_softmax``) and the mixture posterior's temperature.
COST_TEMPERATURE = 0.1
# Chosen on the benchmark's dev targets (seed 1) from {0.005, 0.01, 0.02, 0.05, 0.1}: see docs/method.md.
POSTERIOR_TEMPERATURE = 0.02
# The temperature of the target classes' mixture over the probe classes (``probe-hscore``); chosen on the
# benchmark's dev targets from {0.01, 0.02, 0.05, 0.1}: see docs/method.md §6.
PROBE_TEMPERATURE = 0.05
# The score that emulates the exact ranking's ordering metric: the shortlist must keep what the exact ranking puts
# first. OT under each ground cost; H-score through the teachers' probe geometry.
METHOD_FOR_COST = {"proto-softmax": "gmm-ot", "joint": "gmm-joint"}
METHOD_FOR_METRIC = {"hscore": "probe-hscore"}


def method_for(metric: str = DEFAULT_METRIC, cost: str = DEFAULT_COST) -> str:
    """The specification score a ranking ordered by ``metric`` (OT under ``cost``) shortlists with. Metrics with no
    emulation of their own get the default metric's (measured for H-score and OT only)."""
    if metric == "ot":
        return METHOD_FOR_COST.get(cost, METHOD_FOR_COST[DEFAULT_COST])
    return METHOD_FOR_METRIC.get(metric) or METHOD_FOR_METRIC.get(DEFAULT_METRIC) or METHOD_FOR_COST[DEFAULT_COST]


#: What the shortlist uses when nobody names a metric: the emulation of ``hubscout.scores.DEFAULT_METRIC``.
DEFAULT_METHOD = method_for(DEFAULT_METRIC)
# A target class is covered by a described class when its images are on average at least this close to the
# class's prototype, relative to the class's own images (SpecIndex.coverage). On the quick zoo same-domain target
# classes measured 0.88-1.23, other domains 0.18-0.84 (docs/method.md §6).
COVERAGE_RATIO = 0.85
#: The specification scores (lower is better): ``fn(index, target, temperature) -> (teachers,)``.
SCORE_METHODS = Registry("specification score", directions=("lower",))


@dataclass
class SpecIndex:
    """Many specifications stacked for scoring in one pass: R = all their described classes. Prototypes (R×d),
    log class masses, each teacher's first row, and two sparse R×R matrices over the stacked classes: the
    transposed confusion (``conf_t[k, j]`` = confusion[j, k]) and the geometry minus its row's rest value."""

    teacher_ids: list[str]
    prototypes: np.ndarray
    log_mass: np.ndarray
    starts: np.ndarray
    conf_t: "object"
    geo: "object"
    geo_rest: np.ndarray
    agreement: np.ndarray
    labels: list[list[str]] = field(default_factory=list)
    spread: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per stacked class (Specification.spread)
    probe: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per teacher: described by the probe set
    # Per teacher, its probe geometry flattened (T×P², ``Specification.probe_gram``); has_gram: the teachers that
    # have one of the common size P.
    probe_gram: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    has_gram: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # The last target's cosines: the score and the coverage share the one big matrix product.
    _cos: tuple = field(default=(None, None), init=False, repr=False, compare=False)

    @classmethod
    def build(cls, specs: Sequence[Specification]) -> "SpecIndex":
        from scipy import sparse

        sizes = np.array([len(s.rows) for s in specs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(specs) else sizes
        R = int(sizes.sum())
        if not len(specs):
            empty = sparse.csr_matrix((0, 0))
            return cls([], np.zeros((0, REFERENCE_DIM), np.float32), np.zeros(0), starts, empty, empty,
                       np.zeros(0), np.zeros(0), [])
        protos = np.empty((R, specs[0].prototypes.shape[1]), np.float32)
        for s, o in zip(specs, starts):
            protos[o:o + len(s.rows)] = s.prototypes
        mass = np.concatenate([s.class_mass for s in specs]).astype(np.float64)

        def stacked(idx_name: str, val_name: str, minus=None):
            idx = [getattr(s, idx_name) for s in specs]
            val = [getattr(s, val_name) for s in specs]
            widths = np.array([i.shape[1] for i in idx])
            r = np.concatenate([np.repeat(np.arange(len(s.rows)) + o, w) for s, o, w in zip(specs, starts, widths)])
            c = np.concatenate([i.reshape(-1) + o for i, o in zip(idx, starts)])
            v = np.concatenate([x.reshape(-1) for x in val]).astype(np.float64)
            if minus is not None:
                v = v - minus[r]
            return r, c, v

        geo_rest = np.concatenate([s.geo_rest for s in specs]).astype(np.float64)
        r, c, v = stacked("conf_idx", "conf_val")
        agreement = np.zeros(R)
        np.add.at(agreement, r[r == c], v[r == c])
        conf_t = sparse.csr_matrix((v, (c, r)), shape=(R, R))
        r, c, v = stacked("geo_idx", "geo_val", minus=geo_rest)
        geo = sparse.csr_matrix((v, (r, c)), shape=(R, R))
        sizes_g = [s.probe_gram.shape[0] for s in specs if s.probe_gram.size]
        P = max(set(sizes_g), key=sizes_g.count) if sizes_g else 0  # older or odd ones without: no geometry
        has_gram = np.array([s.probe_gram.shape == (P, P) and P > 0 for s in specs])
        grams = np.zeros((len(specs), P * P), np.float32)
        for i in np.flatnonzero(has_gram):
            grams[i] = specs[i].probe_gram.reshape(-1)
        return cls([s.teacher_id for s in specs], protos, np.log(np.maximum(mass, 1e-8)), starts, conf_t, geo,
                   geo_rest, np.clip(agreement, 0.0, 1.0), [list(s.labels) for s in specs],
                   np.concatenate([s.spread for s in specs]).astype(np.float64),
                   np.array([s.source == PROBE_SOURCE for s in specs]), grams, has_gram)

    def __len__(self) -> int:
        return len(self.teacher_ids)

    def scores(self, target: TargetEmbedding, method: str = DEFAULT_METHOD,
               temperature: float | None = None) -> np.ndarray:
        """Every teacher's score (lower is better); ``temperature`` None: the method's own
        (:data:`PROBE_TEMPERATURE` for the probe scores, :data:`POSTERIOR_TEMPERATURE` for the others)."""
        score = SCORE_METHODS.get(method)
        if not len(self):
            return np.zeros(0)
        if temperature is None:
            temperature = PROBE_TEMPERATURE if score.needs == "probe" else POSTERIOR_TEMPERATURE
        return score.fn(self, target, temperature)

    def probe_size(self) -> int:
        return int(round(np.sqrt(self.probe_gram.shape[1]))) if self.probe_gram.ndim == 2 else 0

    def probe_known(self, target: TargetEmbedding) -> np.ndarray:
        """Per teacher, the share of the target's classes its probe geometry knows about: the classes the probe
        set covers (the coverage ratio of :meth:`covered` against the probe classes), for every teacher that has
        a probe geometry; nothing for the others, or when the target was not placed among the probe classes."""
        P = self.probe_size()
        if (target.probe_cover is None or target.probe_cos is None or P == 0
                or np.shape(target.probe_cos)[1] != P):
            return np.zeros(len(self))
        share = float(np.mean(np.asarray(target.probe_cover) >= COVERAGE_RATIO))
        return self.has_gram * share

    def coverage(self, target: TargetEmbedding) -> np.ndarray:
        """Per teacher, the share of the target's classes its specification's images cover (:meth:`covered`)."""
        return self.covered(target).mean(axis=1) if len(self) else np.zeros(0)

    def covered(self, target: TargetEmbedding) -> np.ndarray:
        """T×C: which target classes each specification's images cover (see :data:`COVERAGE_RATIO`): target
        class c is covered by described class j when c's images are on average at
        least ``COVERAGE_RATIO`` times as close to j's prototype as j's own images are,
        ``spread_c · cos(μ_c, p_j) / spread_j ≥ COVERAGE_RATIO`` (the mean cosine of a class's unit embeddings
        to a unit vector is its spread times the prototypes' cosine). A ratio of mean cosines to the same
        prototype: comparable across teachers, whatever the dimension or how tight their classes are."""
        if not len(self):
            return np.zeros((0, len(target.classes)), bool)
        ratio = _cosines(self, target) * np.asarray(target.spread, np.float64)[None, :] \
            / np.maximum(self.spread, 1e-6)[:, None]
        return _segment_max(ratio, self.starts) >= COVERAGE_RATIO


def _segment_max(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(x, starts, axis=0)


def _segment_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, starts, axis=0)


def _segment_ids(index: SpecIndex) -> np.ndarray:
    seg = np.zeros(len(index.prototypes), np.int64)
    seg[index.starts[1:]] = 1
    return np.cumsum(seg)


def _cost(cos: np.ndarray) -> np.ndarray:
    """``cost_prototype_softmax`` on cosines: -log softmax over target classes / log C, per row."""
    C = cos.shape[1]
    if C == 1:
        return np.zeros_like(cos)
    z = cos / COST_TEMPERATURE
    z = z - z.max(axis=1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.clip(-logq / np.log(C), 0.0, 1.0)


def _cosines(index: SpecIndex, target: TargetEmbedding) -> np.ndarray:
    if index._cos[0] is not target:
        index._cos = (target, (index.prototypes @ target.prototypes.T.astype(np.float32)).astype(np.float64))
    return index._cos[1]


def _posterior(index: SpecIndex, cos: np.ndarray, seg: np.ndarray, temperature: float) -> np.ndarray:
    """π(j | c) within each teacher: softmax over its classes of cos/τ + log mass, the posterior of a mixture
    over its class prototypes for the target class prototype."""
    z = cos / temperature + index.log_mass[:, None]
    z = z - _segment_max(z, index.starts)[seg]
    e = np.exp(z)
    return e / _segment_sum(e, index.starts)[seg]


def _score_nearest(index: SpecIndex, target: TargetEmbedding, temperature: float = 0.0) -> np.ndarray:
    """Each target class goes to its nearest teacher class and pays that class's reference-space cost
    (specification version 1's score)."""
    cos = _cosines(index, target)
    M = _cost(cos)
    seg = _segment_ids(index)
    hit = cos >= _segment_max(cos, index.starts)[seg] - 1e-7
    return np.minimum.reduceat(np.where(hit, M, np.inf), index.starts, axis=0).mean(axis=1)


def _score_gmm(index: SpecIndex, target: TargetEmbedding, temperature: float, agreement: bool) -> np.ndarray:
    """The mixture posterior spreads each target class over the teacher's classes, which pay the reference-space
    cost; with ``agreement``, a class the teacher recognises with probability a_k only pays
    a_k·M + (1 − a_k)·(mean cost of the teacher's classes)."""
    cos = _cosines(index, target)
    seg = _segment_ids(index)
    M = _cost(cos)
    post = _posterior(index, cos, seg, temperature)
    if agreement:
        sizes = np.diff(np.append(index.starts, len(index.prototypes)))
        mean_cost = _segment_sum(M, index.starts) / sizes[:, None]
        a = index.agreement[:, None]
        M = a * M + (1.0 - a) * mean_cost[seg]
    return _segment_sum(post * M, index.starts).mean(axis=1)


def _predicted(index: SpecIndex, target: TargetEmbedding, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The mixture posterior π(j|c) (R×C) and the teacher's predictions it implies, p̂(k|c) = Σ_j π(j|c)
    confusion[j, k] (R×C): what a teacher would do on the target, read off its specification."""
    cos = _cosines(index, target)
    post = _posterior(index, cos, _segment_ids(index), temperature)
    return post, np.asarray(index.conf_t @ post)


def _expected_cost(index: SpecIndex, pred: np.ndarray, M: np.ndarray, rest) -> np.ndarray:
    """Per teacher, the class-balanced Σ_k p̂(k|c) M[k, c]; predicted mass outside the described classes pays
    ``rest`` (per teacher and class, or one number)."""
    described = _segment_sum(pred, index.starts)  # T×C
    cost = _segment_sum(pred * M, index.starts) + np.clip(1.0 - described, 0.0, 1.0) * rest
    return cost.mean(axis=1)


def _score_gmm_ot(index: SpecIndex, target: TargetEmbedding, temperature: float) -> np.ndarray:
    """Exact OT emulated on the specification. Target class c is the mixture π(·|c) of the teacher's classes; the
    teacher then predicts p̂(k|c) = Σ_j π(j|c) confusion[j, k] (mass to classes it does not describe pays the
    teacher's mean cost), and its classifier row k meets c at cosine Ĝ[k, c] = Σ_j π(j|c) geometry[k, j], which
    gives the cost ``-log softmax_c(Ĝ[k, ·]/0.1)[c] / log C`` of exact OT's ``cost_prototype_softmax``."""
    post, pred = _predicted(index, target, temperature)
    g_hat = np.asarray(index.geo @ post) + index.geo_rest[:, None]
    M = _cost(g_hat)
    sizes = np.diff(np.append(index.starts, len(index.prototypes)))
    mean_cost = _segment_sum(M, index.starts) / sizes[:, None]
    return _expected_cost(index, pred, M, mean_cost)


def _score_gmm_joint(index: SpecIndex, target: TargetEmbedding, temperature: float,
                     alpha: float = 1e-3) -> np.ndarray:
    """Exact OT with the ``joint`` ground cost emulated on the specification: the teacher's predictions
    p̂(k|c) as in :func:`_score_gmm_ot`, their class-balanced joint J = p̂/C, the cost M = 1 − P(c|k) of
    :func:`hubscout.ot.cost_joint` (same ``alpha`` smoothing) and the score ⟨J, M⟩ summed per teacher. Mass the
    teacher sends to classes its specification does not describe pays the uniform cost 1 − 1/C."""
    _, pred = _predicted(index, target, temperature)
    C = pred.shape[1]
    J = pred / C
    M = 1.0 - (J + alpha / C) / (J.sum(axis=1, keepdims=True) + alpha)
    return _expected_cost(index, pred, M, 1.0 - 1.0 / C)


def _label_cover(index: SpecIndex, target: TargetEmbedding) -> np.ndarray:
    names = {c.lower() for c in target.classes}
    return np.array([len(names & {x.lower() for x in labels}) / max(len(names), 1) for labels in index.labels])


# Registered here, in the order the scores were introduced; a new one is one more line, or a decorator on its function.
SCORE_METHODS.register("nearest", direction="lower")(_score_nearest)
SCORE_METHODS.register("gmm", direction="lower", agreement=False)(_score_gmm)
SCORE_METHODS.register("gmm-agreement", direction="lower", agreement=True)(_score_gmm)
SCORE_METHODS.register("gmm-ot", direction="lower")(_score_gmm_ot)
SCORE_METHODS.register("gmm-joint", direction="lower")(_score_gmm_joint)


@SCORE_METHODS.register("gmm-ot+labels", direction="lower")
def _score_gmm_ot_labels(index: SpecIndex, target: TargetEmbedding, temperature: float) -> np.ndarray:
    """``gmm-ot`` with a bonus of 0.1 × the fraction of target class names that are teacher label names."""
    return _score_gmm_ot(index, target, temperature) - 0.1 * _label_cover(index, target)


@SCORE_METHODS.register("probe-hscore", direction="lower", needs="probe")
def _score_probe_hscore(index: SpecIndex, target: TargetEmbedding, temperature: float) -> np.ndarray:
    """H-score (``hubscout.scores.hscore``) emulated from each teacher's probe geometry G (P×P,
    ``hubscout.spec.probe_gram``). Target class c is the mixture a_c = softmax_p(cos(c, probe class p)/τ) of the
    probe classes, so its mean in the teacher's features is Mᵀ a_c, and its class-balanced H-score is
    Ĥ = Σ_c (a_c − ā)ᵀ G (a_c − ā) / C = ⟨G, K⟩ with K = Σ_c (a_c − ā)(a_c − ā)ᵀ / C: one matrix-vector product
    for all teachers. G ≼ P·I (the probe classes are equal-sized, so the between-class covariance bounds the
    total), hence Ĥ ≤ P·tr K, what a teacher that separates the probe classes perfectly would get; the score is
    1 − Ĥ / (P·tr K) in [0, 1], the share of that ideal separation the teacher falls short of, as 1 − H/(C − 1)
    is for the exact H-score. A teacher without a probe geometry, or a target not placed among the probe classes
    (or whose classes all look alike there), scores 1, and :func:`~hubscout.spec.knowledge` says nothing is known."""
    out = np.ones(len(index))
    P = index.probe_size()
    if target.probe_cos is None or P == 0 or np.shape(target.probe_cos)[1] != P or not index.has_gram.any():
        return out
    z = np.asarray(target.probe_cos, np.float64) / temperature
    a = np.exp(z - z.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    ac = a - a.mean(axis=0, keepdims=True)
    K = ac.T @ ac / len(a)
    ideal = P * float(np.trace(K))
    if ideal <= 1e-12:
        return out
    h = (index.probe_gram @ K.reshape(-1).astype(np.float32)).astype(np.float64)  # rows without one: zeros
    return np.where(index.has_gram, np.clip(1.0 - h / ideal, 0.0, 1.0), out)


def spec_scores(specs: Sequence[Specification] | SpecIndex, target: TargetEmbedding,
                method: str = DEFAULT_METHOD) -> np.ndarray:
    """Cheap relatedness of every specification to the target (lower is better)."""
    index = specs if isinstance(specs, SpecIndex) else SpecIndex.build(list(specs))
    return index.scores(target, method)
