"""The shortlist: the k best teachers by specification, every teacher its specification cannot rule out (what it
knows about the target: coverage), and which teachers a ranking then runs exactly (docs/method.md §6)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hubscout.spec._format import Specification, TargetEmbedding
from hubscout.spec._reference import REFERENCE_NAME
from hubscout.spec._scores import COVERAGE_RATIO, DEFAULT_METHOD, SCORE_METHODS, SpecIndex  # noqa: F401


# Half-width of a known specification score's interval around the exact score it emulates; chosen on the
# shortlist benchmark's dev targets (docs/method.md §6), for gmm-joint and again for probe-hscore (whose score is
# normalised like 1 − H/(C − 1), so the same width means the same there).
SCORE_TOLERANCE = 0.02
SCORE_MAX = 1.0  # every specification score, like the exact costs it emulates, lies in [0, 1]


def knowledge(index: SpecIndex, target: TargetEmbedding,
              method: str = DEFAULT_METHOD) -> tuple[np.ndarray, np.ndarray]:
    """Per teacher, (the share of the target's classes its specification knows about for ``method``, its
    coverage). A score read off the probe geometry (``probe-hscore``) knows the target classes the probe set
    covers (:meth:`SpecIndex.probe_known`), the same for every teacher. For the others: a
    specification knows target class c when its images cover c. A training-sample specification whose images do
    not cover c still knows c when some other teacher's *training data* covers it: the target lies in a domain
    that teacher learnt and this one did not, and its score says so. Where no training data covers c, nothing is
    known about c: the specifications' order there is a guess (measured: the exact best sat at specification rank
    193 of 215 on a target none of the teachers knew). A probe-described specification knows only what the probe
    images cover: the probe set is not its teacher's data, so elsewhere it says nothing."""
    covered = index.covered(target)
    if SCORE_METHODS.get(method).needs == "probe":
        return index.probe_known(target), covered.mean(axis=1)
    own = ~index.probe[:, None]
    learnt = (covered & own).any(axis=0)  # target classes inside some teacher's training data
    return (covered | (own & learnt[None, :])).mean(axis=1), covered.mean(axis=1)


def score_bounds(scores: np.ndarray, known: np.ndarray,
                 tolerance: float = SCORE_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """The interval of exact scores a specification allows: ± ``tolerance`` on what it knows, anything in
    [0, SCORE_MAX] on the rest."""
    lo = known * np.clip(scores - tolerance, 0.0, SCORE_MAX)
    hi = known * np.clip(scores + tolerance, 0.0, SCORE_MAX) + (1.0 - known) * SCORE_MAX
    return lo, hi


def run_mask(scores: np.ndarray, known: np.ndarray, k: int,
             tolerance: float = SCORE_TOLERANCE) -> tuple[np.ndarray, np.ndarray, float]:
    """Which teachers run exact OT: the ``k`` best by score, and every teacher whose interval reaches below the
    k-th smallest upper bound (it could be among the k best, so its specification cannot rule it out).
    Returns (the mask, the lower bounds, that k-th upper bound)."""
    keep = np.zeros(len(scores), bool)
    if not len(scores):
        return keep, np.zeros(0), 0.0
    keep[np.argsort(scores, kind="stable")[:k]] = True
    lo, hi = score_bounds(scores, known, tolerance)
    j = min(max(k, 1), len(hi)) - 1
    bar = float(np.partition(hi, j)[j])
    return keep | (lo <= bar), lo, bar


@dataclass
class Shortlist:
    teacher_ids: list[str]  # what is ranked exactly: the k best by score, then those not ruled out, by score
    scores: dict[str, float]
    considered: int
    elapsed_s: float
    embed_s: float = 0.0
    method: str = DEFAULT_METHOD
    best: list[str] = field(default_factory=list)  # the k best by score
    coverage: dict[str, float] = field(default_factory=dict)  # of the kept teachers
    skipped: list[dict] = field(default_factory=list)  # ruled out, best score first
    bar: float = 0.0  # the k-th smallest upper bound

    def to_dict(self) -> dict:
        return {"method": f"specification:{self.method}", "reference": REFERENCE_NAME, "considered": self.considered,
                "kept": len(self.teacher_ids), "teacher_ids": self.teacher_ids,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
                "coverage": {k: round(float(v), 4) for k, v in self.coverage.items()},
                "uncertain_run": [t for t in self.teacher_ids if t not in set(self.best)],
                "skipped": self.skipped, "bound": round(self.bar, 6),
                "embed_target_s": round(self.embed_s, 4), "elapsed_s": round(self.elapsed_s, 4),
                "how": ("every teacher scored from its stored specification (class prototypes, masses, confusion "
                        f"and geometry in the shared {REFERENCE_NAME} embedding, and its features' geometry over "
                        f"the probe classes; score '{self.method}', which emulates the metric the ranking orders "
                        "by, lower is better) against the target embedded once, with an interval from what the "
                        "specification knows about the target; the best kept for the exact ranking, and every "
                        "teacher it cannot rule out")}


def shortlist(specs: Sequence[Specification] | SpecIndex, target: TargetEmbedding, k: int = 10,
              method: str = DEFAULT_METHOD, tolerance: float = SCORE_TOLERANCE) -> Shortlist:
    """The ``k`` teachers whose specifications score best against the target by ``method``, and every teacher
    whose specification cannot rule it out (:func:`run_mask`). ``elapsed_s`` is the scoring alone (stacking
    included when given a list); the target's embedding time is ``embed_s``."""
    t0 = time.perf_counter()
    index = specs if isinstance(specs, SpecIndex) else SpecIndex.build(list(specs))
    scores = index.scores(target, method)
    known, cov = knowledge(index, target, method)
    keep, lo, bar = run_mask(scores, known, k, tolerance)
    order = np.argsort(scores, kind="stable")
    best = order[:k]
    ids = [index.teacher_ids[i] for i in best] + [index.teacher_ids[i] for i in order[k:] if keep[i]]
    skipped = [{"teacher_id": index.teacher_ids[i], "spec_score": round(float(scores[i]), 6),
                "coverage": round(float(cov[i]), 4), "lower_bound": round(float(lo[i]), 6)}
               for i in order if not keep[i]]
    at = {t: i for i, t in enumerate(index.teacher_ids)}
    return Shortlist(ids, {t: float(scores[at[t]]) for t in ids}, len(index), time.perf_counter() - t0,
                     target.embed_s, method, [index.teacher_ids[i] for i in best],
                     {t: float(cov[at[t]]) for t in ids}, skipped, bar)


SHORTLIST_RULE = ("every teacher with a current specification is scored from it against the target embedded once "
                  "by the shared reference model, with the score that emulates the metric the ranking orders by "
                  "(lower is better), and given an interval: ± the score tolerance where the specification knows "
                  "the target, anything where it does not (the H-score emulation knows the target classes the "
                  "probe set covers; for OT a probe-described specification knows only the target classes its "
                  "images cover). The best k run exactly, and so "
                  "does every teacher whose interval reaches the k-th best upper bound; a teacher without a "
                  "current specification (pending, failed or stale) always runs, since nothing rules it out")
SKIP_REASON = ("ruled out by its specification: it knows the target, and its score's lower bound lies above the "
               "k-th best upper bound ('bound')")


def shortlist_plan(candidates: Sequence[str], index: SpecIndex, target: TargetEmbedding, k: int,
                   method: str | None = None) -> tuple[list[str], dict]:
    """Which of ``candidates`` run exactly: what :func:`shortlist` keeps with ``method`` (None: the default's,
    ``hubscout.spec.method_for``; ``index`` holds the candidates that have a specification) plus every candidate
    without one. Returns (ids to run, in candidate order; the description a ranking reports: what ran and why,
    and every skipped teacher with its numbers)."""
    short = shortlist(index, target, k, method or DEFAULT_METHOD)
    specified = set(index.teacher_ids)
    unspecified = [t for t in candidates if t not in specified]
    run_set = set(short.teacher_ids) | set(unspecified)
    run = [t for t in candidates if t in run_set]
    not_run = [t for t in candidates if t not in run_set]
    info = {**short.to_dict(), "mode": "shortlist", "k": k, "rule": SHORTLIST_RULE, "shortlisted": short.best,
            "unspecified_run": unspecified, "not_run_count": len(not_run), "not_run": not_run,
            "skip_reason": SKIP_REASON, "rank_all": {"shortlist": 0}}
    return run, info


# Up to this many teachers a repository is ranked exhaustively: the shortlist's fixed cost (embedding the target
# with the reference model, reading the specifications) is then about what it saves. Measured in
# benchmarks/shortlist.py ("break-even"); docs/method.md §6.
EXHAUSTIVE_MAX_TEACHERS = 32
# The shortlist's k when a ranking does not say (the CLI; the service's HUBSCOUT_SHORTLIST_K).
DEFAULT_SHORTLIST_K = 10


def exhaustive_info(n: int, limit: int) -> dict:
    """What a ranking reports when the repository is small enough to rank every teacher exactly."""
    return {"mode": "exhaustive", "considered": n, "kept": n, "skipped": [], "not_run": [], "not_run_count": 0,
            "exhaustive_max_teachers": limit,
            "rule": f"{n} teachers, at most {limit}: every teacher is ranked exactly (a shortlist would save less "
                    "than it costs)"}
