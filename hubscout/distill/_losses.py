"""The distillation terms, one per method of :data:`KD_METHODS` (``DistillConfig.kd``).

A method is registered as a function of one teacher's outputs on the clean training split that returns its term:
``logits(model, x)``, what the teacher says about a batch (computed once per augmented view), and
``loss(teacher_logits, student_logits)``, what the student is trained to match.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hubscout.extract import features_and_logits
from hubscout.ot import cost_matrix, sinkhorn_log_torch
from hubscout.registry import Registry

#: name -> ``fn(outputs, labels, n_classes, cfg, device) -> term`` (see the module's docstring).
KD_METHODS = Registry("distillation method", directions=())


def ot_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, M: torch.Tensor, *, tau: float,
            reg: float, n_iter: int) -> torch.Tensor:
    """Mean entropic OT cost from the teacher's softened prediction (K) to the student's (C) under cost ``M``.

    The distillation term of Lu, Ye & Zhan (arXiv 2204.11526); gradients flow to the student only.
    """
    log_a = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    log_b = F.log_softmax(student_logits.float() / tau, dim=1)
    return sinkhorn_log_torch(log_a, log_b, M, reg, n_iter=n_iter).mean()


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, tau: float) -> torch.Tensor:
    """KL(teacher || student) of the τ-softened predictions over the same classes (Hinton et al., 2015)."""
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    p = F.softmax(teacher_logits.detach().float() / tau, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


@dataclass
class OTTerm:
    """The OT term: the teacher's softened prediction transported onto the student's under its cost ``M``."""

    M: torch.Tensor
    tau: float
    reg: float
    n_iter: int

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        return ot_loss(teacher_logits, student_logits, self.M, tau=self.tau, reg=self.reg, n_iter=self.n_iter)


@dataclass
class ProtoTerm:
    """The prototype KD baseline: the teacher's features as logits over the target classes (cosine to each
    class centre / temperature), matched by KL."""

    centres: torch.Tensor
    temperature: float
    tau: float

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(features_and_logits(model, x)[0].float(), dim=1) @ self.centres.T / self.temperature

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        return kl_loss(teacher_logits, student_logits, tau=self.tau)


@KD_METHODS.register("ot")
def ot_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> OTTerm:
    """The ground cost ``cfg.cost`` of the teacher, computed once from its outputs on the training split."""
    M = cost_matrix(cfg.cost, classifier_weight=outputs.classifier_weight, features=outputs.features,
                    probs=outputs.probs, labels=labels, n_classes=n_classes)
    return OTTerm(torch.as_tensor(M, dtype=torch.float32, device=device), cfg.tau, cfg.reg, cfg.sinkhorn_iters)


@KD_METHODS.register("proto")
def proto_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> ProtoTerm:
    """The unit-norm centres of the target classes in the teacher's feature space."""
    centres = np.stack([outputs.features[labels == c].mean(axis=0) for c in range(n_classes)])
    return ProtoTerm(F.normalize(torch.as_tensor(centres, dtype=torch.float32, device=device), dim=1),
                     cfg.proto_temperature, cfg.tau)
