"""hubscout: rank the teachers of a model repository for a new labelled task, and distil a student.

The science lives here, importable without the service: datasets, the teacher repository, feature/logit
extraction, OT relatedness, baseline scores, distillation and export.
"""
__version__ = "0.2.0"
