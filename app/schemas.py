"""Request and response bodies of the API."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from hubscout.options import LAM_RANGE, REG_RANGE, TAU_RANGE
from hubscout.scores import DEFAULT_METRICS, METRICS, resolve_metrics

# The enum in the OpenAPI schema is the registry's names: registering a metric is the whole change.
Metric = Literal[tuple(METRICS)]  # type: ignore[valid-type]
Direction = Literal["lower", "higher"]
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
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "ds_3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b", "name": "footwear", "sha256": "9e1c…", "n_samples": 30,
        "num_classes": 3, "classes": ["sandal", "sneaker", "ankle-boot"],
        "class_counts": {"sandal": 10, "sneaker": 10, "ankle-boot": 10}, "image_shape": [28, 28, 1],
        "size_bytes": 20480, "upload_bytes": 23110, "created_at": "2026-12-01T15:00:00Z"}]})

    id: str
    name: str = Field(description="The name this dataset was uploaded under (the request's `name`, else the "
                                  "file's); the same content under another name is another dataset sharing it.")
    sha256: str = Field(description="Content hash of the decoded images, labels and classes.")
    n_samples: int
    num_classes: int
    classes: list[str] = Field(description="Class names in label index order: index i is classes[i], the order "
                                           "every result (ranking, student outputs, labels.json) uses. An npz "
                                           "gives it in its `classes` array (else 0..K-1), a zip in a root "
                                           "`classes.txt` (else the folder names sorted).")
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
                    "without a ready specification is always ranked exactly.")
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
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"dataset_id": "ds_3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b", "metrics": ["ot", "logme"], "top_k": 5}]})

    dataset_id: str = Field(min_length=1, max_length=64)
    metrics: list[Metric | Literal["all"]] = Field(
        default_factory=lambda: list(DEFAULT_METRICS), min_length=1, max_length=len(METRICS) + 1,
        description=f"Any of {', '.join(f'{n} ({e.direction} is better)' for n, e in METRICS.items())}, or "
                    "\"all\"; the first orders the ranking. A comma-separated string is accepted too.")
    teacher_ids: list[TeacherId] | None = Field(None, min_length=1, max_length=10_000,
                                          description="Default: every teacher of the repository.")
    top_k: int | None = Field(None, ge=1, le=10_000, description="Keep the best this many teachers in the result "
                                                                 "(all are scored); default: all.")
    callback_url: str | None = CALLBACK_URL
    shortlist: int | None = Field(
        None, ge=0, le=100_000,
        description="Score every teacher from its specification first (with the score that emulates the metric "
                    "the ranking orders by) and rank exactly only the best this many, plus every teacher its specification cannot rule out and any teacher without one. Left "
                    "out: the service default (HUBSCOUT_SHORTLIST_K, 10); null or 0: exhaustive. A repository of "
                    "at most HUBSCOUT_EXHAUSTIVE_MAX_TEACHERS (32) candidates is always ranked exhaustively. The "
                    "result's `shortlist` lists the skipped teachers and why; send `shortlist: 0` (or name them "
                    "in `teacher_ids`) to rank them too.")

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
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"dataset_id": "ds_3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b", "teacher_ids": ["fashion-footwear"], "epochs": 30}]})

    dataset_id: str = Field(min_length=1, max_length=64)
    teacher_ids: list[TeacherId] = Field(default_factory=list, max_length=64,
                                   description="One or more teachers; several are weighted by OT relatedness. "
                                               "May be empty with ce_only.")
    student_arch: str | None = Field(
        None, min_length=1, max_length=128,
        description="`auto` (the default: the largest student size with at most 5 M parameters and at most the "
                    "smallest teacher's count), a size from /v1/info `student_sizes` (nano, micro, tiny, small, "
                    "medium), or any timm architecture. One that cannot take the dataset's images is refused "
                    "(422); one larger than its teachers is trained and flagged in `params.student`.")
    epochs: int | None = Field(None, ge=1, description=(
        "Epochs to train; named without `min_steps`: exactly this many. Not named: 40, or more on tiny data for "
        "at least 300 optimiser steps. At most the server's `max_epochs` (/v1/info)."))
    min_steps: int | None = Field(None, ge=0, le=100_000, description=(
        "Train at least this many optimiser steps (more epochs than `epochs` on tiny data). Whatever the "
        "combination, the epochs run stop at the server's `max_epochs`; the student's `metrics.schedule` says "
        "what ran and why."))
    lam: float | None = Field(None, ge=LAM_RANGE[0], le=LAM_RANGE[1], allow_inf_nan=False,
                              description="λ, the weight of the distillation term (default 1)")
    tau: float | None = Field(None, ge=TAU_RANGE[0], le=TAU_RANGE[1], allow_inf_nan=False,
                              description="τ, the softening temperature (default 4)")
    reg: float | None = Field(None, ge=REG_RANGE[0], le=REG_RANGE[1], allow_inf_nan=False,
                              description="ε, Sinkhorn's entropic regularisation in cost units (default 0.05)")
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


class QueueAhead(BaseModel):
    kind: Literal["ranking", "distillation"]
    status: Literal["queued", "running"]
    progress: float = Field(ge=0, le=1)
    id: str | None = Field(None, description="The job's id when it is yours (another key's jobs are not named).")


class QueueInfo(BaseModel):
    """Where a queued job stands: the jobs that the workers take before it (first come, first served)."""

    position: int = Field(ge=1, description="1: the next job to start once a worker is free.")
    queued_ahead: int = Field(ge=0, description="Queued jobs created before this one.")
    running: list[QueueAhead] = Field(description="The jobs running now, holding the workers.")
    ahead: list[QueueAhead] = Field(description="The first queued jobs ahead of this one (at most 10).")


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
    queued_s: float | None = Field(None, description="Seconds from creation until a worker started it (so far, "
                                                     "while queued).", examples=[183.2])
    computing_s: float | None = Field(None, description="Seconds a worker has computed it (so far, while "
                                                        "running); null until it starts.", examples=[4.71])
    queue: QueueInfo | None = Field(None, description="Queued jobs: what runs and waits ahead of it.")


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


class Score(BaseModel):
    value: float | None = Field(description="The metric's value; null when it is not finite.")
    direction: Direction = Field(description="Which way is better.")


# A [teacher class, number] pair: JSON arrays of two items, the name first.
NamedNumber = tuple[str, float]


class RankedTeacher(BaseModel):
    rank: int = Field(description="1 = best under the primary metric.")
    teacher_id: str
    name: str
    scores: dict[Metric, Score]
    correspondences: dict[str, list[NamedNumber]] = Field(description=(
        "Per target class, the teacher classes the OT plan takes its mass from, heaviest first, as "
        "[teacher class, share of the target class's mass in 0..1]."), examples=[{"sandal": [["sandal", 0.91]]}])
    matches: dict[str, list[NamedNumber]] = Field(default_factory=dict, description=(
        "Per target class, the teacher classes nearest under the centred prototype cost (the label-space "
        "bridge), nearest first, as [teacher class, cost]: a cost, lower is nearer, not a share."),
        examples=[{"sandal": [["sandal", 0.12], ["sneaker", 0.31]]}])
    plan: TransportPlan | None = Field(None, description="With the ot metric: the transport plan, for a heatmap.")
    cached: bool = Field(description="Whether the teacher's outputs on this dataset came from the cache (no forward "
                                     "pass).")
    forward_s: float = Field(0.0, description="Seconds of the teacher's forward pass over the dataset (0 when cached).")
    score_s: float = Field(0.0, description="Seconds computing this teacher's metrics.")


class SkippedTeacher(BaseModel):
    teacher_id: str
    spec_score: float = Field(description="Its specification score (lower is better).")
    coverage: float = Field(description="Share of the target's classes its specification's images cover.")
    lower_bound: float = Field(description="The lowest exact score its specification allows; above `bound`.")


class ShortlistOut(BaseModel):
    """How the teachers that ran were chosen (docs/method.md §6)."""

    model_config = ConfigDict(extra="allow")

    mode: Literal["shortlist", "exhaustive"] = Field(
        "shortlist", description="exhaustive: a repository of at most `exhaustive_max_teachers` candidates, every "
                                 "teacher ranked exactly.")
    considered: int = Field(description="Candidates scored from a specification (exhaustive: all candidates).")
    kept: int
    rule: str
    k: int | None = None
    shortlisted: list[str] = Field(default_factory=list, description="The k best by specification score.")
    uncertain_run: list[str] = Field(default_factory=list,
                                     description="Run too: their specifications cannot rule them out.")
    unspecified_run: list[str] = Field(default_factory=list, description="Run too: no ready specification.")
    scores: dict[str, float] = Field(default_factory=dict, description="Specification score of every kept teacher.")
    coverage: dict[str, float] = Field(default_factory=dict, description="Coverage of every kept teacher.")
    skipped: list[SkippedTeacher] = Field(default_factory=list, description="Every teacher not run, best first.")
    skip_reason: str | None = None
    bound: float | None = Field(None, description="The k-th best upper bound the skipped lie above.")
    not_run: list[str] = Field(default_factory=list)
    not_run_count: int = 0
    rank_all: dict[str, Any] | None = Field(None, description="Send these fields with the same dataset to rank "
                                                              "every teacher (`{\"shortlist\": 0}`).")


class RankingOut(BaseModel):
    """``Ranking.to_dict()`` of the library (what ``hubscout rank --json`` prints), plus the ids around it."""

    id: str
    job_id: str
    dataset_id: str
    created_at: dt.datetime
    dataset_sha256: str
    metrics: list[Metric]
    primary: Metric = Field(description="The metric that orders the teachers (the first asked for).")
    cost: str = Field("", description="The OT cost matrix between label spaces (hubscout.ot.COSTS).")
    directions: dict[Metric, Direction]
    n_samples: int
    classes: list[str] = Field(description="The dataset's classes in label index order.")
    elapsed_s: float = Field(description="Seconds the ranking computed (a cached one: little). The job says how "
                                         "long it waited and ran: queued_s, computing_s.")
    teachers: list[RankedTeacher]
    shortlist: ShortlistOut | None = Field(None, description="Which teachers ran and why, which were skipped.")
    excluded: list[dict[str, str]] = Field(default_factory=list, description=(
        "Teachers left out of the ranking, with the reason (outputs that are not finite on this dataset)."))


class StudentSize(BaseModel):
    name: str
    arch: str
    kwargs: dict[str, Any]
    params: int = Field(description="Parameters at 10 classes and RGB input (a task's own count differs a little).")


class StudentChoice(BaseModel):
    """What student a distillation trains, and how it compares with its teachers (``hubscout.students``)."""

    arch: str
    kwargs: dict[str, Any]
    size: str | None = Field(description="The size's name, when the student is one of /v1/info `student_sizes`.")
    params: int = Field(description="The student's parameter count for this task.")
    teacher_params: int | None = Field(description="The smallest teacher's parameter count; null without teachers.")
    larger_than_teachers: bool
    note: str


class CeControl(BaseModel):
    model_config = ConfigDict(extra="allow")

    val_accuracy: float | None = Field(description="The CE-only student's accuracy on the same validation split.")
    train_accuracy: float | None = None
    cached: bool = Field(description="Read from an earlier job on the same data, student, schedule and seed.")


class Schedule(BaseModel):
    model_config = ConfigDict(extra="allow")

    epochs: int = Field(description="Epochs run.")
    steps: int = Field(description="Optimiser steps run.")
    epochs_asked: int | None
    min_steps: int
    max_epochs: int | None
    note: str = Field(description="What ran and why (extended for min_steps, capped at max_epochs).")


class StudentOut(BaseModel):
    id: str
    job_id: str
    dataset_id: str
    teacher_ids: list[str]
    student_arch: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    val_accuracy: float | None = Field(None, description="The student's accuracy on its held-out validation split.")
    ce_only: CeControl | None = Field(None, description=(
        "The cross-entropy-only control: the same student, split, schedule and seed without teachers, trained in "
        "the same job (or cached). null for students distilled before it existed."))
    gain_vs_ce: float | None = Field(None, description="val_accuracy minus the CE-only control's.")
    student: StudentChoice | None = None
    schedule: Schedule | None = None
    archive_bytes: int
    archive_sha256: str
    created_at: dt.datetime
    download: str


class RepositoryBuild(BaseModel):
    """The teacher repository: ``ready``, or the demo repository still ``building`` on first start (or ``failed``)."""

    state: Literal["ready", "building", "failed"]
    built: int = Field(0, description="Teachers built so far (building).")
    total: int = Field(0, description="Teachers the build makes (0 until it knows).")
    current: str | None = Field(None, description="The last teacher built, or the step under way.")
    error: str | None = None
    elapsed_s: float | None = None


class Info(BaseModel):
    """What a client (the web page) needs to know before its first call; public."""

    name: Literal["hubscout"] = "hubscout"
    version: str
    auth_required: bool = Field(description="Whether requests must carry an API key (Authorization: Bearer).")
    mode: Literal["embedded", "distributed"]
    metrics: list[str]
    default_metrics: list[str] = Field(description="What a ranking that names no metric computes; the first "
                                                   "orders it.")
    max_upload_bytes: int
    max_epochs: int
    student_sizes: list[StudentSize] = Field(description="Students by size, smallest first (`student_arch` names).")
    default_student: str = Field(description="The rule that picks the student when none is named.")
    repository: RepositoryBuild


class Health(BaseModel):
    status: Literal["ok", "building"] = Field(description="building: the API answers, but the demo teacher "
                                                          "repository is still being built (first start).")
    checks: dict[str, str]
    mode: Literal["embedded", "distributed"]
    repository: RepositoryBuild
