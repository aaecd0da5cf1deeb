"""The distillation terms, one per method of :data:`KD_METHODS` (``DistillConfig.kd``).

A method is registered as a function of one teacher's outputs on the clean training split that returns its term:
``logits(model, x)``, what the teacher says about a batch (computed once per augmented view), and
``loss(teacher_logits, student_logits)``, what the student is trained to match; optionally
``view_logits(logits)``, applied to a whole view's logits once they are all computed (a term that looks at the
view as a set, e.g. a transport over its images).
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

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
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

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
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


@dataclass
class OTProtoTerm:
    """Both terms at once: the OT term on the teacher's own prediction and the prototype term on its features,
    averaged. The OT term carries what the teacher's head says (which of its classes an image resembles); the
    prototype term what its features say (which target class), which stays right when the head is wrong on the
    target's domain."""

    ot: OTTerm
    proto: ProtoTerm

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        feats, logits = features_and_logits(model, x)
        proto = F.normalize(feats.float(), dim=1) @ self.proto.centres.T / self.proto.temperature
        return torch.cat([logits.float(), proto], dim=1)

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
        K = self.ot.M.shape[0]
        return 0.5 * (self.ot.loss(teacher_logits[:, :K], student_logits)
                      + self.proto.loss(teacher_logits[:, K:], student_logits))


@KD_METHODS.register("ot+proto")
def ot_proto_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> OTProtoTerm:
    """The OT term (cost ``cfg.cost``) and the prototype term, averaged."""
    return OTProtoTerm(ot_term(outputs, labels, n_classes, cfg, device),
                       proto_term(outputs, labels, n_classes, cfg, device))


# ------------------------------------------------------------------------------------ instance-weighted terms
# REFILLED (Ye et al., CVPR 2020) weights each instance by how sure the teacher is of it. On the training images
# the label is known, so the weight here is the teacher's margin for the *true* class, read through the bridge to
# the target's labels: its probability minus the largest other class's, zero when negative. An image the teacher
# gets wrong teaches nothing, and a teacher that is wrong on the target's domain teaches little overall, the
# student then learning from cross-entropy alone.


def true_class_margin(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max(0, q[y] - max over the other classes of q), per row of the (B, C) probabilities ``q``."""
    own = q.gather(1, y[:, None])[:, 0]
    other = q.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return (own - other).clamp_min(0.0)


def _bridge(outputs, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """P(c | k) (K×C): the teacher-class to target-class bridge of the empirical joint (LEEP's), smoothed."""
    from hubscout.ot import cost_joint

    return 1.0 - cost_joint(outputs.probs, labels, n_classes)


@dataclass
class WeightedOTTerm(OTTerm):
    """The OT term, each instance weighted by the teacher's margin for its true class through the bridge."""

    bridge: torch.Tensor = None  # type: ignore[assignment]

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
        log_a = F.log_softmax(teacher_logits.detach().float() / self.tau, dim=1)
        per = sinkhorn_log_torch(log_a, F.log_softmax(student_logits.float() / self.tau, dim=1), self.M, self.reg,
                                 n_iter=self.n_iter)
        if y is None:
            return per.mean()
        w = true_class_margin(F.softmax(teacher_logits.detach().float(), dim=1) @ self.bridge, y)
        return (w * per).mean()


@dataclass
class WeightedProtoTerm(ProtoTerm):
    """The prototype term, each instance weighted by the prototype teacher's margin for its true class."""

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
        log_q = F.log_softmax(student_logits.float() / self.tau, dim=1)
        p = F.softmax(teacher_logits.detach().float() / self.tau, dim=1)
        per = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(dim=1)
        if y is None:
            return per.mean()
        w = true_class_margin(F.softmax(teacher_logits.detach().float(), dim=1), y)
        return (w * per).mean()


@KD_METHODS.register("ot-w")
def weighted_ot_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> WeightedOTTerm:
    """:func:`ot_term` with instance weights from the bridge of the empirical joint."""
    base = ot_term(outputs, labels, n_classes, cfg, device)
    bridge = torch.as_tensor(_bridge(outputs, labels, n_classes), dtype=torch.float32, device=device)
    return WeightedOTTerm(base.M, base.tau, base.reg, base.n_iter, bridge)


@KD_METHODS.register("proto-w")
def weighted_proto_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> WeightedProtoTerm:
    """:func:`proto_term` with instance weights from the prototype teacher's own probabilities."""
    base = proto_term(outputs, labels, n_classes, cfg, device)
    return WeightedProtoTerm(base.centres, base.temperature, base.tau)


# --------------------------------------------------------------------------------- view-level transport terms


@dataclass
class ProtoOTTerm(ProtoTerm):
    """The prototype term, its soft labels an entropic OT plan between the view's images and the target classes.

    The prototype teacher gives image i the class distribution softmax(cos(f_i, μ_c) / T). When the teacher's
    features are shifted on the target's domain (every image a little closer to one centre), those labels pile up
    on a few classes. Here they are the rows of the entropic OT plan between the view's images (uniform mass) and
    the target classes (mass = the training labels' frequencies) under the cost 1 − cos(f_i, μ_c), with ε = T:
    the same softmax with one additive correction per class that makes the view's labels, summed, match the class
    frequencies (the self-labelling of Asano, Rupprecht & Vedaldi, ICLR 2020; Caron et al.'s SwAV, NeurIPS 2020).
    """

    class_mass: np.ndarray = None  # type: ignore[assignment]

    def view_logits(self, logits: torch.Tensor) -> torch.Tensor:
        from hubscout.ot import sinkhorn_log

        cos = logits.double().cpu().numpy() * self.temperature
        n = len(cos)
        P = sinkhorn_log(np.full(n, 1.0 / n), self.class_mass, 1.0 - cos, self.temperature, n_iter=200)
        rows = np.log(np.maximum(P * n, 1e-30))  # log of each row's conditional, P_i· / (1/n)
        return torch.as_tensor(rows, dtype=torch.float32, device=logits.device)


@KD_METHODS.register("proto-ot")
def proto_ot_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> ProtoOTTerm:
    """:func:`proto_term` with its labels balanced by an entropic OT over each view (:class:`ProtoOTTerm`)."""
    base = proto_term(outputs, labels, n_classes, cfg, device)
    mass = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return ProtoOTTerm(base.centres, base.temperature, base.tau, mass / mass.sum())


@dataclass
class ProbeTerm:
    """A linear probe on the teacher's features: a multinomial logistic regression fitted on the training split
    (standardised features, L2), its logits over the target classes matched by KL. The learned counterpart of the
    prototype bridge (REFILLED's stage 2 uses centres; a probe weighs the feature dimensions)."""

    mean: torch.Tensor
    scale: torch.Tensor
    W: torch.Tensor
    b: torch.Tensor
    tau: float

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = (features_and_logits(model, x)[0].float() - self.mean) / self.scale
        return f @ self.W.T + self.b

    def loss(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, y=None) -> torch.Tensor:
        return kl_loss(teacher_logits, student_logits, tau=self.tau)


@KD_METHODS.register("probe")
def probe_term(outputs, labels: np.ndarray, n_classes: int, cfg, device: torch.device) -> ProbeTerm:
    """Logistic regression (C=1, lbfgs) on the standardised teacher features of the training split."""
    from sklearn.linear_model import LogisticRegression

    f = np.asarray(outputs.features, dtype=np.float64)
    mean, scale = f.mean(axis=0), np.maximum(f.std(axis=0), 1e-6)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((f - mean) / scale, labels)
    W, b = clf.coef_, clf.intercept_
    if W.shape[0] == 1:  # sklearn's binary case: one row for class 1; logits (-z/2, z/2) give the same softmax
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return ProbeTerm(t(mean), t(scale), t(W), t(b), cfg.tau)


@dataclass
class WeightedProtoOTTerm(ProtoOTTerm, WeightedProtoTerm):
    """:class:`ProtoOTTerm`'s balanced labels, each instance weighted by their margin for its true class
    (:class:`WeightedProtoTerm`): a teacher that is wrong on the target's images teaches little."""


@KD_METHODS.register("proto-ot-w")
def weighted_proto_ot_term(outputs, labels: np.ndarray, n_classes: int, cfg,
                           device: torch.device) -> WeightedProtoOTTerm:
    """:func:`proto_ot_term` with instance weights from its own labels' margin for the true class."""
    base = proto_ot_term(outputs, labels, n_classes, cfg, device)
    return WeightedProtoOTTerm(base.centres, base.temperature, base.tau, base.class_mass)
