"""The body of a webhook call, shared by the worker that sends it and the API that documents it."""
from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field


class JobEventJob(BaseModel):
    id: str
    kind: Literal["ranking", "distillation"]
    status: Literal["succeeded", "failed", "cancelled"]
    dataset_id: str
    result_id: str | None = Field(description="The ranking's or student's id when the job succeeded.")
    result: str | None = Field(description="Path of the result under the API, when the job succeeded.")
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None


class JobEvent(BaseModel):
    """The body of a webhook call: signed as ``X-Hubscout-Signature: sha256=HMAC(secret, "<timestamp>." + body)``
    with the ``X-Hubscout-Timestamp`` header's value."""

    event: Literal["job.succeeded", "job.failed", "job.cancelled"]
    job: JobEventJob
