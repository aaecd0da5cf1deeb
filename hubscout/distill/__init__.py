"""Cross-task distillation of a small student from one or more teachers of the repository.

The loss follows Lu, Ye & Zhan, "Selective Cross-Task Distillation" (arXiv 2204.11526): a teacher trained on
other classes cannot be matched to the student class by class, so its softened prediction (over its K classes)
is *transported* onto the student's softened prediction (over the C target classes) under a ground cost that
relates the two label spaces, and the entropic transport cost is minimised alongside the cross-entropy on the
few labels:

    L = CE(s(x), y) + λ τ² Σ_t w_t OT_ε( softmax(t(x)/τ), softmax(s(x)/τ); M_t )

``M_t`` (K×C) is computed once, from the teacher's features on the labelled training split (see
:func:`hubscout.ot.cost_matrix`). The teachers see the same augmented images as the student; that is where the
distillation term adds information beyond the labels. Augmented views are drawn per epoch from a seeded
generator and the teachers' logits for a view are computed once and reused (``teacher_views``), so a large
teacher costs ``min(epochs, teacher_views)`` passes over the training set, not one per epoch.

Modules: ``_config`` (DistillConfig), ``_student`` (the Student, its folder format, evaluation), ``_losses`` (the
distillation terms, registered in :data:`KD_METHODS`), ``_augment`` (the views), ``_training`` (the loop).
"""
from hubscout.distill._augment import augment_images
from hubscout.distill._config import DistillConfig, StudentError
from hubscout.distill._losses import KD_METHODS, kl_loss, ot_loss
from hubscout.distill._student import (CONFIG_FILE, FORMAT, FORMAT_VERSION, LABELS_FILE, METRICS_FILE, WEIGHTS_FILE,
                                       Student, evaluate, load_student)
from hubscout.distill._training import distill

__all__ = ["DistillConfig", "Student", "StudentError", "distill", "evaluate", "load_student", "ot_loss", "kl_loss",
           "augment_images", "KD_METHODS", "WEIGHTS_FILE", "CONFIG_FILE", "METRICS_FILE", "LABELS_FILE", "FORMAT",
           "FORMAT_VERSION"]
