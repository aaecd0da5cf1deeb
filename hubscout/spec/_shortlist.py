"""The shortlist: the k best teachers by specification, and which teachers a ranking then runs exactly."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hubscout.spec._format import Specification, TargetEmbedding
from hubscout.spec._reference import REFERENCE_NAME
from hubscout.spec._scores import DEFAULT_METHOD, SpecIndex


@dataclass
class Shortlist:
    teacher_ids: list[str]
    scores: dict[str, float]
    considered: int
    elapsed_s: float
    embed_s: float = 0.0
    method: str = DEFAULT_METHOD

    def to_dict(self) -> dict:
        return {"method": f"specification:{self.method}", "reference": REFERENCE_NAME, "considered": self.considered,
                "kept": len(self.teacher_ids), "teacher_ids": self.teacher_ids,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
                "embed_target_s": round(self.embed_s, 4), "elapsed_s": round(self.elapsed_s, 4),
                "how": ("every teacher scored from its stored specification (class prototypes, masses and "
                        f"self-agreement in the shared {REFERENCE_NAME} embedding; score '{self.method}', lower is "
                        "better) against the target embedded once; the best kept for exact OT")}


def shortlist(specs: Sequence[Specification] | SpecIndex, target: TargetEmbedding, k: int = 10,
              method: str = DEFAULT_METHOD) -> Shortlist:
    """The ``k`` teachers whose specifications score best against the target. ``elapsed_s`` is the scoring
    alone (stacking included when given a list); the target's embedding time is ``embed_s``."""
    t0 = time.perf_counter()
    index = specs if isinstance(specs, SpecIndex) else SpecIndex.build(list(specs))
    scores = index.scores(target, method)
    order = np.argsort(scores, kind="stable")[:k]
    ids = [index.teacher_ids[i] for i in order]
    return Shortlist(ids, {index.teacher_ids[i]: float(scores[i]) for i in order}, len(index),
                     time.perf_counter() - t0, target.embed_s, method)


SHORTLIST_RULE = ("every teacher with a current specification is scored from it against the target embedded once "
                  "by the shared reference model (lower is better) and only the best k run exact OT; a teacher "
                  "without a current specification (pending, failed or stale) always runs exact OT, since nothing "
                  "rules it out")


def shortlist_plan(candidates: Sequence[str], index: SpecIndex, target: TargetEmbedding, k: int,
         method: str = DEFAULT_METHOD) -> tuple[list[str], dict]:
    """Which of ``candidates`` run exact OT: the ``k`` best by specification (``index`` holds the candidates that
    have one) plus every candidate without one. Returns (ids to run, in candidate order; the description a
    ranking reports)."""
    short = shortlist(index, target, k, method)
    specified = set(index.teacher_ids)
    unspecified = [t for t in candidates if t not in specified]
    run_set = set(short.teacher_ids) | set(unspecified)
    run = [t for t in candidates if t in run_set]
    not_run = [t for t in candidates if t not in run_set]
    info = {**short.to_dict(), "k": k, "rule": SHORTLIST_RULE, "shortlisted": short.teacher_ids,
            "unspecified_run": unspecified, "not_run_count": len(not_run), "not_run": not_run}
    return run, info
