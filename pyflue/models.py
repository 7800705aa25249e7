"""Wire models shared by the store, the runtime and every transport.

A run record and its events serialize the same way everywhere: the CLI's ``--format json``,
the HTTP API, SSE frames and WebSocket frames (see ../shared/API.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from pyflue.errors import InvalidPayload


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"
    interrupted = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


class EventType(StrEnum):
    """Every event type a run can record. ``data`` keys are documented in docs/events.md."""

    run_start = "run_start"
    run_end = "run_end"
    log = "log"
    container_created = "container_created"
    container_started = "container_started"
    container_exited = "container_exited"
    container_removed = "container_removed"
    shell_start = "shell_start"
    shell_output = "shell_output"
    shell_end = "shell_end"
    file_read = "file_read"
    file_write = "file_write"
    file_op = "file_op"
    model_turn_start = "model_turn_start"
    model_text_delta = "model_text_delta"
    model_turn_end = "model_turn_end"
    tool_start = "tool_start"
    tool_end = "tool_end"
    sandbox_limit = "sandbox_limit"
    run_requeued = "run_requeued"


class ErrorInfo(BaseModel):
    """A failure as recorded on a run and sent to clients."""

    type: str
    message: str
    details: str | None = None


# Event indexes are 64-bit signed in every store: a cursor past this is bad input, not a 500.
MAX_EVENT_INDEX = 2**63 - 1


def parse_event_index(raw: str) -> int | None:
    """An event cursor from a header or query string (ASCII digits, in range), else None."""
    raw = raw.strip()
    if raw.isascii() and raw.isdigit() and int(raw) <= MAX_EVENT_INDEX:
        return int(raw)
    return None


class Event(BaseModel):
    """One stored run event. ``event_index`` is 1-based and gap-free per run."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    event_index: int
    type: EventType
    timestamp: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class Run(BaseModel):
    """A run record, as stored and as returned by every surface."""

    run_id: str
    workflow: str
    status: RunStatus
    payload: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: ErrorInfo | None = None
    reason: str | None = None
    image: str | None = None
    source: str = "cli"
    owner: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    event_count: int = 0
    idempotency_key: str | None = None
    # Set when a cancel was asked through another worker than the one running the run: why.
    cancel_requested: str | None = None
    # 1, then one more each time the run went back to the queue (a workflow safe to retry
    # whose worker was lost or stopped).
    attempt: int = 1


def end_error(status: RunStatus, error: ErrorInfo | None, reason: str | None) -> ErrorInfo | None:
    """The error a finished run reports: its own, or for a run ended from outside (cancelled,
    timed out, interrupted) one that names the status and why; None for a completed run."""
    if error is not None or status is RunStatus.completed:
        return error
    return ErrorInfo(type=status.value,
                     message=f"run {status.value}: {reason or 'no reason was recorded'}")


def run_end_data(status: RunStatus, *, error: ErrorInfo | None = None, reason: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The ``data`` of a ``run_end`` event: ``status``, ``is_error`` and ``error`` always
    (``error`` is null only for a completed run), ``reason`` when there is one, then extras."""
    shown = end_error(status, error, reason)
    data: dict[str, Any] = {"status": status.value, "is_error": status is not RunStatus.completed,
                            "error": shown.model_dump() if shown is not None else None}
    if reason is not None:
        data["reason"] = reason
    return {**data, **extra}


def new_run_id(workflow: str) -> str:
    return f"workflow:{workflow}:{ULID()}"


def parse_payload(raw: str | bytes | None) -> dict[str, Any]:
    """A payload from JSON text: must be a JSON object. Raises InvalidPayload."""
    if raw is None or (isinstance(raw, str | bytes) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(
            f"payload is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            """pass an object such as '{"key": "value"}'"""
        ) from None
    return check_payload(value)


def check_payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPayload(
            f"payload must be a JSON object, not {type(value).__name__}; "
            """wrap it, e.g. '{"items": [...]}'"""
        )
    return value
