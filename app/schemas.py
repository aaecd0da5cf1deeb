"""Request and response bodies of the API."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from hubscout.scores import METRICS, resolve_metrics

T = TypeVar("T")
# Bounded items: with the body limit (HUBSCOUT_MAX_JSON_BODY_BYTES) they keep every request small.
TeacherId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Label = Annotated[str, StringConstraints(max_length=512)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class TeacherPage(Page[T], Generic[T]):
    next_after: str | None = Field(None, description="Pass as `after` for the next page (keyset pagination, "
                                                     "stable under inserts); null on the last page.")


# ------------------------------------------------------------------------------------------------- datasets

class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str = Field(description="Content hash of the decoded images, labels and classes.")
    n_samples: int
    num_classes: int
    classes: list[str]
    class_counts: dict[str, int]
    image_shape: list[int] = Field(description="[height, width, channels]")
    size_bytes: int = Field(description="Stored size.")
    upload_bytes: int
    created_at: dt.datetime


class DemoTargetOut(BaseModel):
    name: str
    description: str
    classes: list[str]


class DemoDatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="A target of GET /v1/demo-targets.")
    shots: int = Field(10, ge=1, description="Samples per class.")
    seed: int = Field(0, ge=0, le=2**31 - 1)


# ------------------------------------------------------------------------------------------------- teachers

class InputConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(224, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    mean: list[FiniteFloat] = Field(default_factory=lambda: [0.485, 0.456, 0.406], min_length=1, max_length=3)
    std: list[PositiveFloat] = Field(default_factory=lambda: [0.229, 0.224, 0.225], min_length=1, max_length=3,
                                     description="Finite and positive, one per channel.")


class TeacherCreate(BaseModel):
    """The text fields of ``POST /v1/teachers`` (sent as multipart fields beside the ``weights`` file)."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(min_length=1, max_length=128, description="timm architecture name")
    name: str = Field(min_length=1, max_length=255)
    labels: list[Label] = Field(min_length=2, max_length=100_000)
    input: InputConfigIn = Field(default_factory=InputConfigIn)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                           description="Default: a slug of the name.")


class SpecInfo(BaseModel):
    """The teacher's search specification (see docs/method.md): whether a ranking can shortlist it."""

    status: Literal["pending", "ready", "failed"] = Field(
        description="pending: a worker is computing it; ready: used by shortlists; failed: see error. A teacher "
                    "without a ready specification always runs exact OT.")
    source: str | None = Field(None, description="training-sample (from its uploaded or known training data) or "
                                                 "probe-predictions (the fixed probe set labelled by the teacher)")
    updated_at: dt.datetime | None = None
    error: str | None = None


class TeacherSummary(BaseModel):
    id: str
    name: str
    arch: str
    num_classes: int
    num_params: int
    weights_sha256: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    spec: SpecInfo
    created_at: dt.datetime


class TeacherOut(TeacherSummary):
    labels: list[str]
    arch_kwargs: dict[str, Any]


# ------------------------------------------------------------------------------------------------- jobs

CALLBACK_URL = Field(None, max_length=2048, description="Optional http(s) URL called once with a signed JSON POST "
                                                        "when the job ends (succeeded, failed or cancelled).")


def check_callback_url(v: str | None) -> str | None:
    """An absolute http(s) URL with a host and no credentials (they would be stored and shown with the job)."""
    from urllib.parse import urlsplit

    if v is None:
        return None
    if any(c.isspace() for c in v):
        raise ValueError("callback_url must not contain whitespace")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise ValueError(f"callback_url is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("callback_url must be an http or https URL")
    if not parts.hostname:
        raise ValueError("callback_url must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("callback_url must not carry credentials; verify the signature instead")
    return v

class RankingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    metrics: list[str] = Field(default_factory=lambda: ["ot"], min_length=1, max_length=len(METRICS),
                               description=f"Any of {', '.join(METRICS)}, or \"all\"; the first orders.")
    teacher_ids: list[TeacherId] | None = Field(None, min_length=1, max_length=10_000,
                                          description="Default: every teacher of the repository.")
    top_k: int | None = Field(None, ge=1, le=10_000)
    callback_url: str | None = CALLBACK_URL
    shortlist: int | None = Field(
        None, ge=0, le=100_000,
        description="Score every teacher from its specification first and run exact OT only on the best this "
                    "many (plus any teacher without a specification). Left out: the service default "
                    "(HUBSCOUT_SHORTLIST_K, 10) when there are more teachers than that; null or 0: exhaustive.")

    _callback = field_validator("callback_url")(check_callback_url)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [m.strip() for m in v.split(",") if m.strip()]
        if isinstance(v, list) and v:
            if not all(isinstance(m, str) for m in v):
                return v  # let the type check report it
            return resolve_metrics(v)  # the registry's names, "all" expanded, order kept
        return v

    @field_validator("teacher_ids")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(v)) if v is not None else None


class DistillationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    teacher_ids: list[TeacherId] = Field(default_factory=list, max_length=64,
                                   description="One or more teachers; several are weighted by OT relatedness. "
                                               "May be empty with ce_only.")
    student_arch: str | None = Field(None, min_length=1, max_length=128, description="timm architecture")
    epochs: int | None = Field(None, ge=1)
    min_steps: int | None = Field(None, ge=0, le=100_000,
                                  description="Train at least this many optimiser steps (more epochs than asked on "
                                              "tiny data); 0: exactly `epochs`.")
    lam: float | None = Field(None, ge=0, allow_inf_nan=False)
    tau: float | None = Field(None, gt=0, allow_inf_nan=False)
    ce_only: bool = False
    seed: int = Field(0, ge=0, le=2**31 - 1)
    callback_url: str | None = CALLBACK_URL

    _callback = field_validator("callback_url")(check_callback_url)

    @field_validator("teacher_ids")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a teacher is named twice")
        return v


class JobLinks(BaseModel):
    self: str
    result: str | None = None


class CallbackOut(BaseModel):
    url: str
    state: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job has not ended; pending: being delivered (with retries); delivered: a 2xx "
                    "answer was received; failed: every attempt failed.")
    attempts: int
    last_error: str | None
    done_at: dt.datetime | None = Field(description="When it was delivered or given up.")


class JobOut(BaseModel):
    id: str
    kind: Literal["ranking", "distillation"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    message: str
    dataset_id: str
    params: dict[str, Any]
    error: str | None
    attempts: int
    result_id: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    curves: dict[str, list[float | int | None]] | None = Field(
        None, description="Distillations: the per-epoch training curves so far (epoch, loss, ce, ot, train_acc, "
                          "val_acc), updated while the job runs.")
    links: JobLinks
    callback: CallbackOut | None = None


# ------------------------------------------------------------------------------------------------- results

class TransportPlan(BaseModel):
    """The OT plan between a teacher's classes and the target's, as column shares (``hubscout.ot.plan_summary``).

    ``share[i][j]``: the fraction of target class ``target_classes[j]``'s mass that comes from teacher class
    ``teacher_classes[i]``. Large label spaces are cut to the teacher classes with the most mass (``truncated``;
    ``kept_share`` is how much of each column the kept rows hold)."""

    teacher_classes: list[str]
    teacher_index: list[int] = Field(description="Positions of the kept rows among the teacher's classes.")
    target_classes: list[str]
    share: list[list[float]]
    kept_share: list[float]
    teacher_num_classes: int
    target_num_classes: int
    truncated: bool


class RankedTeacher(BaseModel):
    model_config = ConfigDict(extra="allow")

    rank: int
    teacher_id: str
    name: str
    scores: dict[str, dict[str, Any]]
    correspondences: dict[str, list[list[Any]]]
    matches: dict[str, list[list[Any]]] = Field(default_factory=dict, description=(
        "Per target class, the teacher classes nearest under the centred prototype cost (the label-space "
        "bridge), as [name, cost]"))
    plan: TransportPlan | None = Field(None, description="With the ot metric: the transport plan, for a heatmap.")
    cached: bool


class RankingOut(BaseModel):
    """``Ranking.to_dict()`` of the library (what ``hubscout rank --json`` prints), plus the ids around it."""

    model_config = ConfigDict(extra="allow")

    id: str
    job_id: str
    dataset_id: str
    created_at: dt.datetime
    dataset_sha256: str
    metrics: list[str]
    primary: str
    directions: dict[str, str]
    n_samples: int
    classes: list[str]
    elapsed_s: float
    teachers: list[RankedTeacher]
    excluded: list[dict[str, str]] = Field(default_factory=list, description=(
        "Teachers left out of the ranking, with the reason (outputs that are not finite on this dataset)."))


class StudentOut(BaseModel):
    id: str
    job_id: str
    dataset_id: str
    teacher_ids: list[str]
    student_arch: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    archive_bytes: int
    archive_sha256: str
    created_at: dt.datetime
    download: str


class Info(BaseModel):
    """What a client (the web page) needs to know before its first call; public."""

    name: Literal["hubscout"] = "hubscout"
    version: str
    auth_required: bool = Field(description="Whether requests must carry an API key (Authorization: Bearer).")
    mode: Literal["embedded", "distributed"]
    metrics: list[str]
    max_upload_bytes: int
    max_epochs: int


class Health(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str]
    mode: Literal["embedded", "distributed"]
