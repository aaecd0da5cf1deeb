"""Teacher specifications: find the right teachers without running them.

A specification is computed once, when a teacher is added, from one forward pass of the teacher over a few
images per class, and one more over the probe set. It holds three descriptions of the teacher:

* its *data*, in a shared reference embedding (ImageNet EfficientNet-Lite0 features at 112 px, the same model for
  every teacher): a prototype and a mass per class, i.e. a per-class reduced kernel mean embedding in the sense
  of the learnware paradigm (Zhou & Tan, "Learnware: small models do big", 2024; Wu et al., "Model reuse with
  reduced kernel mean embedding specification", TKDE 2021);
* its *model*, in its own terms, on the same images: its confusion (what it predicts on each class's images)
  and its geometry (the cosine between each classifier row and its own mean feature of each class), the two
  things exact OT reads off a teacher on a target (``hubscout.ot``), here on the teacher's own classes;
* its *features*, on the probe set every teacher sees: the probe geometry (:func:`probe_gram`), H-score's own
  quantity (class means against the Ledoit-Wolf covariance) over the probe classes.

Where the images come from, in order of preference (:func:`specification_for`):

1. ``training-sample``: a labelled sample of the teacher's training data stored beside it (``spec-sample.npz``,
   uploaded with the teacher), or, for the demo zoo, ``SPEC_SAMPLES_PER_CLASS`` images of each of its classes;
2. ``probe-predictions``: a fixed probe set (10 images of every class of every demo source), labelled by the
   teacher itself: a probe image counts towards a class with the probability the teacher gives it, and classes
   that receive less than one image's worth are left out (the probe set says nothing about them).

At ranking time the target set is embedded once with the reference model and every teacher is scored from its
specification alone (:data:`SCORE_METHODS`; lower is better), with the score that emulates the metric the
ranking orders by (:func:`method_for`). The default, ``probe-hscore``, emulates H-score: each target class becomes
a mixture of the probe classes, whose means in the teacher's features the probe geometry relates. For OT,
``gmm-joint`` (or ``gmm-ot``): each target class becomes a mixture over the teacher's classes (the posterior of
the teacher's class prototypes), which tells what the teacher would predict on it (through its confusion) and how
its classifier rows would meet it (through its geometry). All teachers are stacked in one :class:`SpecIndex`, so
1,000 teachers cost a few matrix products.

A specification also says how much it knows about a target (:meth:`SpecIndex.coverage`, :func:`knowledge`): the
share of target classes its images cover (for ``probe-hscore``: that the probe set covers). The shortlist
(:func:`shortlist`, :func:`run_mask`) keeps the k best and every teacher whose specification cannot rule it out;
docs/method.md §6 gives the rule and its reasons.

Modules: ``_reference`` (the shared reference embedder), ``_format`` (what a specification holds, how it is built,
its bytes; the embedded target), ``_images`` (where the images come from), ``_scores`` (:data:`SCORE_METHODS`,
:class:`SpecIndex`), ``_shortlist`` (:func:`shortlist`, :func:`shortlist_plan`), ``_files`` (specifications
beside the teachers of a repository).
"""
from hubscout.spec._files import ensure_specifications, load_specification, repo_cache_dir, save_specification
from hubscout.spec._format import (PROBE_MIN_IMAGES, PROBE_PER_CLASS, PROBE_SOURCE, SPARSE_TOP, SPEC_FILE,
                                   SPEC_SAMPLES_PER_CLASS, SPEC_SAMPLE_FILE, SPEC_VERSION, Specification,
                                   TargetEmbedding, TeacherView, build_specification, class_prototypes,
                                   class_statistics, embed_target, pack_arrays, probe_gram, teacher_view,
                                   unpack_arrays)
from hubscout.spec._images import (EmbedCache, class_sample, probe_classes, probe_images, probe_labels, probe_set,
                                   read_spec_sample, specification_for, zoo_class_keys)
from hubscout.spec._reference import REFERENCE_ARCH, REFERENCE_DIM, REFERENCE_NAME, REFERENCE_SIZE, ReferenceEmbedder
from hubscout.spec._scores import (COST_TEMPERATURE, COVERAGE_RATIO, DEFAULT_METHOD, METHOD_FOR_COST,
                                   METHOD_FOR_METRIC, POSTERIOR_TEMPERATURE, PROBE_TEMPERATURE, SCORE_METHODS,
                                   SpecIndex, method_for, spec_scores)
from hubscout.spec._shortlist import (DEFAULT_SHORTLIST_K, EXHAUSTIVE_MAX_TEACHERS, SCORE_MAX, SCORE_TOLERANCE,
                                      SHORTLIST_RULE, SKIP_REASON, Shortlist, exhaustive_info, knowledge,
                                      run_mask, score_bounds, shortlist, shortlist_plan)

__all__ = [
    "COST_TEMPERATURE", "COVERAGE_RATIO", "DEFAULT_METHOD", "DEFAULT_SHORTLIST_K", "EXHAUSTIVE_MAX_TEACHERS",
    "PROBE_SOURCE", "SCORE_MAX", "SCORE_TOLERANCE", "SKIP_REASON", "class_statistics", "exhaustive_info",
    "knowledge", "run_mask", "score_bounds", "EmbedCache", "METHOD_FOR_COST", "METHOD_FOR_METRIC",
    "POSTERIOR_TEMPERATURE", "PROBE_TEMPERATURE", "method_for",
    "probe_gram", "probe_labels", "probe_classes",
    "PROBE_MIN_IMAGES", "PROBE_PER_CLASS", "REFERENCE_ARCH", "REFERENCE_DIM", "REFERENCE_NAME", "REFERENCE_SIZE",
    "ReferenceEmbedder", "SCORE_METHODS", "SHORTLIST_RULE", "SPARSE_TOP", "SPEC_FILE", "SPEC_SAMPLES_PER_CLASS",
    "SPEC_SAMPLE_FILE", "SPEC_VERSION", "Shortlist", "SpecIndex", "Specification", "TargetEmbedding", "TeacherView",
    "build_specification", "class_prototypes", "class_sample", "embed_target", "ensure_specifications",
    "load_specification", "pack_arrays", "probe_images", "probe_set", "read_spec_sample", "repo_cache_dir",
    "save_specification", "shortlist", "shortlist_plan", "spec_scores", "specification_for", "teacher_view",
    "unpack_arrays", "zoo_class_keys"
]
