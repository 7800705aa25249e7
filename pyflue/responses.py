"""The bodies of the HTTP API's answers, shared by the server and :mod:`pyflue.client`.

The server declares them as the response models of its routes (so the OpenAPI document is
generated from them) and builds its answers from them; the client validates the answers into
them. They import no web framework. The run record is :class:`pyflue.models.Run`; events are
:data:`EventModel`, the tagged union of :mod:`pyflue.events`.

Error bodies are :class:`ErrorBody`: ``{"error": {"type", "message", "details"}}`` plus
``run_id`` and ``status`` when they are about a run that did not complete. ``type`` is a string:
the well-known values are :data:`ERROR_TYPES`; a failed run's is its workflow's exception class
name (``ValueError``) or the pyflue error type that ended it (``image_not_found``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from pyflue.events import KnownEvent
from pyflue.models import Artifact, ResourceSummary, Run
from pyflue.resources import ResourceSample
from pyflue.status import RunStatus

# The element type of every list or stream of events the server sends (EventPage, SSE frames,
# WebSocket frames): the tagged union of the event models. Readers parse with
# pyflue.events.parse_event, which also takes types a newer server adds.
EventModel: TypeAlias = KnownEvent

# The error types the API answers with, and what they mean (docs/server.md has the statuses).
ERROR_TYPES: dict[str, str] = {
    "not_found": "no workflow, run or route of that name",
    "invalid_json": "the request body is not JSON",
    "invalid_payload": "the payload is not a JSON object",
    "invalid_parameter": "a query, path or header parameter is out of its bounds",
    "config_error": "a setting or option of the invocation is wrong",
    "upload_refused": "an uploaded archive is unsafe, too large or unreadable (the message "
                      "names the part, the member and why); no run was created",
    "unsupported_media_type": "the request body is not application/json",
    "payload_too_large": "the request body is over PYFLUE_MAX_BODY_BYTES",
    "unauthorized": "missing or wrong API token",
    "conflict": "the run is not in a status that allows the operation",
    "method_not_allowed": "the route does not take that method",
    "http_error": "another HTTP-level refusal",
    "internal_error": "a bug in the server (its log has the details)",
    "workflow_load_error": "the workflow module cannot be imported or has no run(ctx)",
    "engine_unavailable": "the Docker engine is not reachable",
    "store_error": "the run store cannot be read or written",
    "artifact_unavailable": "an artifact is listed but its content is not in the server's "
                            "artifact folder (workers must share PYFLUE_ARTIFACTS_DIR)",
    "artifact_too_large": "an artifact is over PYFLUE_ARTIFACTS_MAX_BYTES, or a run's over "
                          "PYFLUE_ARTIFACTS_RUN_MAX_BYTES / PYFLUE_ARTIFACTS_MAX_COUNT",
    "range_not_satisfiable": "a Range header past the artifact's end",
    "failed": "the run failed (usually its own exception class name is the type instead)",
    "timed_out": "the run passed its deadline",
    "cancelled": "the run was cancelled",
    "interrupted": "the run's server stopped or died while it ran",
}

_TYPE_DOC = (
    "What went wrong, snake_case. Well-known values: "
    + "; ".join(f"`{name}` ({meaning})" for name, meaning in ERROR_TYPES.items())
    + ". A failed run's type is its workflow's exception class name (e.g. `ValueError`) or "
    "the pyflue error type that ended it (e.g. `image_not_found`): it is an open set."
)


class _Answer(BaseModel):
    """A success body: every field is always sent, defaults included (so the document marks
    them required)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ParameterProblem(BaseModel):
    """One refused parameter: where it is (``["query", "limit"]``) and why."""

    loc: list[str | int]
    msg: str


class ErrorDetail(_Answer):
    """What went wrong, what to do next (``message``), and more when there is more."""

    type: str = Field(description=_TYPE_DOC, examples=list(ERROR_TYPES))
    message: str
    details: str | list[ParameterProblem] | None = Field(
        default=None,
        description="a failed run's traceback; the refused parameters of an "
        "`invalid_parameter`; else null",
    )


class ErrorBody(BaseModel):
    """Every error answer. ``run_id`` and ``status`` are there when the error is about a run
    that exists and did not complete (``?wait=result``)."""

    error: ErrorDetail
    # Sent only when there is a run: never null on the wire, so not in the document either.
    run_id: str | SkipJsonSchema[None] = None
    status: RunStatus | SkipJsonSchema[None] = None

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``run_id`` and ``status`` only when they were given."""
        return self.model_dump(mode="json", exclude_unset=True)


def error_body(type: str, message: str, details: Any = None, *, run_id: str | None = None,
               status: RunStatus | None = None) -> ErrorBody:
    extra: dict[str, Any] = {"run_id": run_id} if run_id is not None else {}
    if status is not None:
        extra["status"] = status
    return ErrorBody(error=ErrorDetail(type=type, message=message, details=details), **extra)


class Accepted(_Answer):
    """``POST /workflows/{name}``: the run is recorded and will start (or has started)."""

    status: Literal["accepted"] = "accepted"
    run_id: str


class Completed(_Answer):
    """``POST /workflows/{name}?wait=result``: the run completed; ``result`` is what its
    ``run(ctx)`` returned (any JSON)."""

    status: Literal["completed"] = "completed"
    run_id: str
    result: Any = None


class CancelAnswer(_Answer):
    """``POST /runs/{run_id}/cancel``: ``cancelled`` (it was queued) or ``cancelling`` (it is
    being stopped and ends ``cancelled`` moments later)."""

    status: Literal["cancelled", "cancelling"]
    run_id: str


class DeleteAnswer(_Answer):
    """``DELETE /runs/{run_id}``: the run, its events and its uploads are gone."""

    status: Literal["deleted"]
    run_id: str


class WorkflowInfo(_Answer):
    """A discovered workflow; ``error`` says why it cannot be loaded (None when it can)."""

    name: str
    description: str = ""
    error: str | None = None


class WorkflowList(_Answer):
    workflows: list[WorkflowInfo]


class RunPage(_Answer):
    """One page of runs, newest first; pass ``next_cursor`` as ``cursor`` for the next
    (null on the last page)."""

    runs: list[Run]
    next_cursor: str | None = None


class EventPage(_Answer):
    """Stored events of a run; ``next_after`` is the index of the last one returned (the
    ``after`` of the next page), or the ``after`` asked for when there are none."""

    run_id: str
    events: list[EventModel]
    next_after: int


class ArtifactList(_Answer):
    """``GET /runs/{run_id}/artifacts``: the run's artifacts, by name."""

    run_id: str
    artifacts: list[Artifact]


class RunMetrics(_Answer):
    """A run's resource samples (E2B's shape), oldest first: while it runs, those taken so far
    (about one a second); after its end, all of them (its record's `resources` sums them up).
    Empty for a run that had no container (or with sampling off)."""

    run_id: str
    status: RunStatus
    metrics: list[ResourceSample]
    resources: ResourceSummary | None = None


class EngineHealth(_Answer):
    """The sandbox engine as the server last saw it: ``up``, since when, and (while down, in
    debug mode only) the last failure's own words."""

    up: bool
    since: datetime
    reason: str | None = None


class PoolFillAnswer(_Answer):
    """One warm pool: its image, the containers it keeps, those ready and those starting;
    ``egress``: the pool for runs with egress (docs/sandbox.md#egress)."""

    image: str
    size: int
    ready: int
    starting: int
    egress: bool = False


class WorkerInfo(_Answer):
    """A worker sharing the run store (a server's scheduler or a `pyflue run`), as its
    heartbeats tell of it: its id (``host:pid:instance``), its first and last heartbeat, the
    seconds since the last, whether that is past the lease (``lost``: its runs are taken
    back), and how many runs it is running now."""

    worker: str
    started_at: datetime
    seen_at: datetime
    age_seconds: float
    lost: bool
    running: int


class WorkerList(_Answer):
    """``GET /workers``: every worker that sent a heartbeat and did not sign off, and the
    lease (``PYFLUE_WORKER_LEASE``) after which a silent one is taken for lost."""

    workers: list[WorkerInfo]
    lease_seconds: float


class Health(_Answer):
    """``GET /health``: whether the server can run workflows (``ok``; false while its Docker
    engine does not answer, with ``reason`` saying why and what to do); how many runs it is
    executing, its limit, its engine (null when the server has no engine to watch), and the
    warm pool's fill per image (empty when the pool is off)."""

    ok: bool
    version: str
    running: int
    max_concurrency: int
    reason: str | None = None
    engine: EngineHealth | None = None
    pool: list[PoolFillAnswer] = Field(default_factory=list)


__all__ = [
    "ERROR_TYPES",
    "Accepted",
    "ArtifactList",
    "CancelAnswer",
    "Completed",
    "DeleteAnswer",
    "EngineHealth",
    "ErrorBody",
    "ErrorDetail",
    "EventModel",
    "EventPage",
    "Health",
    "ParameterProblem",
    "PoolFillAnswer",
    "RunMetrics",
    "RunPage",
    "WorkerInfo",
    "WorkerList",
    "WorkflowInfo",
    "WorkflowList",
    "error_body",
]
