"""Optimal transport between a teacher's label space and a target label space.

Solvers are plain functions in the style of POT (Flamary et al., "POT: Python Optimal Transport", JMLR 2021):
numpy in, numpy out, float64 internally; one differentiable, batched torch solver is used as the distillation
loss.

The ranking idea follows Lu, Ye & Zhan, "Faculty Distillation with Optimal Transport" / "Selective Cross-Task
Distillation" (arXiv 2204.11526): the cost of transporting a teacher's predictions (over its K source classes)
onto the target labels (C classes), under a ground cost that relates the two label spaces, says how well that
teacher fits the task; lower is better.

Conventions: K = number of teacher classes (rows), C = number of target classes (columns), N = samples.

Modules, one concern each: ``_validation`` (input checks), ``_sinkhorn`` (solvers), ``_costs`` (ground costs, the
:data:`COSTS` registry), ``_relatedness`` (the score), ``_readout`` (plans and costs as class names),
``_features`` (transport in the teacher's feature and label spaces: the ranking-v2 candidates measured on the
benchmark's dev half, none of them a default; docs/method.md §7).
"""
from hubscout.ot._costs import (BRIDGE_COST, COSTS, DEFAULT_COST, DEFAULT_DISTILL_COST, cost_joint, cost_matrix,
                                cost_prototype, cost_prototype_softmax)
from hubscout.ot._readout import (PLAN_MAX_TARGET_CLASSES, PLAN_MAX_TEACHER_CLASSES, nearest_classes, plan_summary,
                                  top_correspondences)
from hubscout.ot._relatedness import OTResult, ot_dataset_sinkhorn, ot_relatedness
from hubscout.ot._sinkhorn import LOG_PROB_FLOOR, sinkhorn_log, sinkhorn_log_torch

__all__ = [
    "sinkhorn_log",
    "sinkhorn_log_torch",
    "cost_prototype",
    "cost_prototype_softmax",
    "cost_joint",
    "COSTS",
    "cost_matrix",
    "DEFAULT_COST",
    "DEFAULT_DISTILL_COST",
    "BRIDGE_COST",
    "LOG_PROB_FLOOR",
    "OTResult",
    "ot_relatedness",
    "ot_dataset_sinkhorn",
    "top_correspondences",
    "nearest_classes",
    "plan_summary",
    "PLAN_MAX_TEACHER_CLASSES",
    "PLAN_MAX_TARGET_CLASSES",
]
