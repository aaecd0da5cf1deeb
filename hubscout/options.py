"""Distillation options that the API's request schema and ``/v1/info`` state without importing torch (the API
starts, and answers the page's first call, without it): the bounds of λ, τ and ε, and the student sizes.

Outside the bounds training is numerically unsafe (λτ² scales the distillation term) or the option means nothing
(ε ≫ 1 makes every plan uniform, as costs lie in [0, 1]). :class:`hubscout.distill.DistillConfig` checks them.
"""
LAM_RANGE = (0.0, 100.0)  # λ, the weight of the distillation term
TAU_RANGE = (0.1, 20.0)  # τ, the softening temperature
REG_RANGE = (0.001, 10.0)  # ε, Sinkhorn's entropic regularisation, in cost units

MAX_DEFAULT_PARAMS = 5_000_000

# The student sizes, smallest first: timm's resnet10t at five widths (channels c, 2c, 4c, 8c; stem width), with
# the parameter count at 10 classes and RGB input for listings (tests check it against the built model; a task's
# own count, from hubscout.students.count_params, differs by its head and first convolution).
STUDENT_SIZES_SPEC = (
    # name, arch, c, stem width, parameters at 10 classes, RGB
    ("nano", "resnet10t", 4, 4, 20_477),
    ("micro", "resnet10t", 8, 8, 80_296),
    ("tiny", "resnet10t", 16, 16, 317_990),
    ("small", "resnet10t", 32, 32, 1_265_602),
    ("medium", "resnet10t", 64, 32, 4_927_618),  # timm's resnet10t at its own widths
)


def size_listing() -> list[dict]:
    """The sizes as the API lists them: name, arch, kwargs and the parameters at 10 classes, RGB."""
    return [{"name": n, "arch": a, "kwargs": {"channels": [c, 2 * c, 4 * c, 8 * c], "stem_width": s}, "params": p}
            for n, a, c, s, p in STUDENT_SIZES_SPEC]


DEFAULT_STUDENT_RULE = (
    f"auto: the largest size with at most {MAX_DEFAULT_PARAMS:,} parameters and at most as many as the smallest "
    "teacher named (the smallest size when none is that small, flagged larger_than_teachers)")
