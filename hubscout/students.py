"""Student architectures by size, the rule that picks the default one, and the check that a student fits the input.

The family is timm's ``resnet10t`` at five widths: a plain convolutional network with global pooling, so one
design serves 28-px greyscale digits as well as 224-px RGB photographs, from 20 k to 5 M parameters. The default
student (``student_arch="auto"``) is the largest size whose parameter count, for the task's classes and channels,
is at most :data:`MAX_DEFAULT_PARAMS` and at most the parameter count of the smallest teacher it learns from: a
student is never larger than its teacher unless asked for. When even the smallest size is larger than the teacher,
the smallest is used and the choice says so. Any timm architecture may still be named; it is checked to take the
dataset's input (:func:`check_input`) before any training, and a student larger than its teacher is trained but
flagged (``larger_than_teachers``).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from hubscout.options import MAX_DEFAULT_PARAMS, size_listing

__all__ = ["AUTO", "MAX_DEFAULT_PARAMS", "STUDENT_SIZES", "StudentChoice", "StudentDoesNotFit", "StudentError",
           "StudentSize", "check_input", "choose_student", "count_params", "fit_student", "size_table", "student_side"]

AUTO = "auto"


class StudentError(ValueError):
    """A student folder that cannot be loaded, or a distillation request that cannot run; the message says why."""


class StudentDoesNotFit(StudentError):
    """The student asked for cannot take this task's images or classes: a bad choice of option, not bad data."""


@dataclass(frozen=True)
class StudentSize:
    name: str
    arch: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


# Smallest first (hubscout.options lists them, torch-free). At 10 classes: about 20 k, 80 k, 318 k, 1.27 M and 4.9 M
# parameters.
STUDENT_SIZES: tuple[StudentSize, ...] = tuple(StudentSize(r["name"], r["arch"], r["kwargs"]) for r in size_listing())
_BY_NAME = {s.name: s for s in STUDENT_SIZES}


@dataclass(frozen=True)
class StudentChoice:
    """The student a request gets: its architecture, its size's name (``None`` for a named timm model that is not
    one of the sizes), its parameter count for the task, and how it compares with the teachers."""

    arch: str
    kwargs: dict[str, Any]
    size: str | None
    params: int
    teacher_params: int | None  # the smallest teacher's parameter count; None without teachers
    larger_than_teachers: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "kwargs": dict(self.kwargs), "size": self.size, "params": self.params,
                "teacher_params": self.teacher_params, "larger_than_teachers": self.larger_than_teachers,
                "note": self.note}


def _meta_model(arch: str, kwargs: Mapping[str, Any] | None, num_classes: int, channels: int) -> torch.nn.Module:
    from hubscout.teachers import TeacherError, build_model

    try:
        # On the meta device nothing is allocated or initialised: counting and shape checks cost no memory.
        with torch.device("meta"):
            return build_model(arch, num_classes, channels, kwargs)
    except TeacherError as e:
        raise StudentError(f"bad student: {e}") from e
    except (RuntimeError, ValueError, AssertionError, NotImplementedError) as e:
        raise StudentError(f"bad student: {arch} cannot be built with {dict(kwargs or {})}: {e}") from e


def count_params(arch: str, kwargs: Mapping[str, Any] | None, num_classes: int, channels: int) -> int:
    return _count(arch, json.dumps(dict(kwargs or {}), sort_keys=True), int(num_classes), int(channels))


@functools.lru_cache(maxsize=256)
def _count(arch: str, kwargs_json: str, num_classes: int, channels: int) -> int:
    # Listings and every submission count the same few sizes: built once per process.
    return sum(p.numel() for p in _meta_model(arch, json.loads(kwargs_json), num_classes, channels).parameters())


def check_input(arch: str, kwargs: Mapping[str, Any] | None, num_classes: int, channels: int, size: int) -> None:
    """Raise :class:`StudentDoesNotFit` unless ``arch`` takes ``channels``×``size``×``size`` images: a dry forward of
    two images on the meta device (shapes only; fixed-size models and inputs too small for the downsampling fail
    here, in well under a second, rather than in the worker)."""
    model = _meta_model(arch, kwargs, num_classes, channels).train()  # training mode: BatchNorm sees the batch
    try:
        with torch.no_grad():
            out = model(torch.empty(2, channels, size, size, device="meta"))
    except NotImplementedError:
        return  # an operator without a meta kernel: the shapes cannot be checked here, training will tell
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as e:
        hint = ""
        import timm

        pcfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch) else None
        if pcfg is not None and pcfg.fixed_input_size:
            hint = f" ({arch} takes only {pcfg.input_size[-1]}-px inputs, unless its img_size option says otherwise)"
        raise StudentDoesNotFit(f"student {arch} cannot take this dataset's {channels}×{size}×{size} input{hint}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if tuple(out.shape) != (2, num_classes):
        raise StudentDoesNotFit(f"student {arch} gives outputs of shape {tuple(out.shape)}, "
                                f"not (batch, {num_classes})")


def choose_student(student: str, kwargs: Mapping[str, Any] | None, num_classes: int, channels: int,
                   teacher_params: Sequence[int] = ()) -> StudentChoice:
    """Resolve ``student`` ("auto", a size name or a timm architecture with ``kwargs``) for a task with
    ``num_classes`` classes and ``channels`` input channels, learning from teachers of ``teacher_params``
    parameters (none: a cross-entropy-only student)."""
    known = [int(p) for p in teacher_params if p and int(p) > 0]
    cap_t = min(known) if known else None
    if student == AUTO:
        cap = min(MAX_DEFAULT_PARAMS, cap_t) if cap_t is not None else MAX_DEFAULT_PARAMS
        counted = [(s, count_params(s.arch, s.kwargs, num_classes, channels)) for s in STUDENT_SIZES]
        fitting = [(s, n) for s, n in counted if n <= cap]
        size, n = fitting[-1] if fitting else counted[0]
        rule = (f"the largest student size with at most {cap:,} parameters (at most {MAX_DEFAULT_PARAMS:,}"
                + (f" and at most the smallest teacher's {cap_t:,}" if cap_t is not None else "") + ")")
        note = f"default student: {rule}" if fitting else (
            f"default student: no size is as small as the teacher ({cap_t:,} parameters); the smallest, "
            f"{size.name}, is used")
        return _choice(size.arch, dict(size.kwargs), size.name, n, cap_t, note)
    if student in _BY_NAME:
        if kwargs:
            raise StudentError(f"student size {student!r} takes no architecture options")
        size = _BY_NAME[student]
        n = count_params(size.arch, size.kwargs, num_classes, channels)
        return _choice(size.arch, dict(size.kwargs), size.name, n, cap_t, f"student size {student!r}, as asked")
    n = count_params(student, kwargs, num_classes, channels)
    named = next((s.name for s in STUDENT_SIZES if s.arch == student and dict(s.kwargs) == dict(kwargs or {})), None)
    return _choice(student, dict(kwargs or {}), named, n, cap_t, f"student {student}, as asked")


def student_side(image_side: int, input_size: int | None) -> int:
    """The side the student sees: ``input_size``, or the images' side clamped to [32, 224]."""
    return int(input_size) if input_size is not None else min(max(int(image_side), 32), 224)


def fit_student(student: str, kwargs: Mapping[str, Any] | None, num_classes: int, image_shape: Sequence[int],
                input_size: int | None, teacher_params: Sequence[int] = ()) -> StudentChoice:
    """:func:`choose_student` for images of ``image_shape`` (H, W, C), checked to take them (:func:`check_input`)."""
    h, w, channels = (int(x) for x in image_shape)
    choice = choose_student(student, kwargs, num_classes, channels, teacher_params)
    check_input(choice.arch, choice.kwargs, num_classes, channels, student_side(max(h, w), input_size))
    return choice


def _choice(arch: str, kwargs: dict[str, Any], size: str | None, n: int, cap_t: int | None,
            note: str) -> StudentChoice:
    larger = cap_t is not None and n > cap_t
    if larger:
        note += f"; it has {n / cap_t:.1f}× the parameters of the smallest teacher ({n:,} vs {cap_t:,})"
    return StudentChoice(arch, kwargs, size, n, cap_t, larger, note)


def size_table(num_classes: int = 10, channels: int = 3) -> list[dict[str, Any]]:
    """The sizes with their parameter counts for ``num_classes`` classes and ``channels`` channels, smallest first."""
    return [{"name": s.name, "arch": s.arch, "kwargs": dict(s.kwargs),
             "params": count_params(s.arch, s.kwargs, num_classes, channels)} for s in STUDENT_SIZES]
