"""The run record, shared by the store, the runtime and every transport; the payload rule.

A run record serializes the same way everywhere: the CLI's ``--format json`` and the HTTP API.
Its events are :mod:`pyflue.events`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from ulid import ULID

from pyflue.errors import InvalidPayload, PyflueError
from pyflue.status import RunStatus as RunStatus  # re-exported: the record names it


def __getattr__(name: str) -> Any:
    # Event and EventType lived here before pyflue.events: old imports keep working.
    if name in ("Event", "EventType"):
        import warnings

        from pyflue import events

        warnings.warn(f"pyflue.models.{name} moved to pyflue.events.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(events, name)
    raise AttributeError(f"module 'pyflue.models' has no attribute {name!r}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _absent(value: Any) -> bool:
    return value is None


class ErrorInfo(BaseModel):
    """A failure as recorded on a run and sent to clients.

    ``hint`` is a next step for whoever runs the machine (a ``pyflue`` command): the CLI shows
    it; HTTP answers leave it out unless the server runs with ``PYFLUE_DEBUG=1``."""

    type: str
    message: str
    details: str | None = None
    hint: str | None = Field(
        None, exclude_if=_absent,
        description="a next step for the operator of the machine that ran the run (a `pyflue` "
                    "command); absent otherwise, and in HTTP answers unless the server runs "
                    "with PYFLUE_DEBUG=1")

    @classmethod
    def of(cls, exc: PyflueError, details: str | None = None) -> ErrorInfo:
        """A pyflue error as recorded: its message, and its hint apart."""
        return cls(type=exc.type, message=exc.public_message, hint=exc.hint,
                   details=exc.details or details)

    def text(self) -> str:
        """``type: message; hint``, as the CLI prints it on one line."""
        return f"{self.type}: {self.message}" + (f"; {self.hint}" if self.hint else "")


class ResourceSummary(BaseModel):
    """What a run's container used, sampled from the engine while it ran (docs/observability.md).

    A value the engine could not tell (a remote engine's disk, say) is ``None``."""

    samples: int = Field(0, description="how many samples were taken")
    peak_memory_bytes: int | None = Field(None, description="the most memory the container "
                                          "used at once (the kernel's high-water mark where "
                                          "it keeps one, else the largest sample)")
    memory_limit_bytes: int | None = Field(None, description="the container's memory limit")
    cpu_seconds: float | None = Field(None, description="CPU time the container used")
    disk_used_bytes: int | None = Field(None, description="the most the workspace held")
    disk_total_bytes: int | None = Field(None, description="the workspace's size cap")
    bytes_in: int | None = Field(None, description="network bytes received")
    bytes_out: int | None = Field(None, description="network bytes sent")
    file_bytes_in: int = Field(0, description="bytes copied into the workspace (writes, "
                                              "uploads)")
    file_bytes_out: int = Field(0, description="bytes copied out of it (reads, downloads)")


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
    # The run's container (its last one, for a run that was retried) and when it was removed:
    # unset while removal is still under way (a warm container is removed in the background
    # after the run's end; the reaper removes it if this worker dies first).
    container_id: str | None = None
    container_removed_at: datetime | None = None
    # The run's trace (32 hex digits, W3C trace context) and the incoming `traceparent` it
    # continues, if one came with the invocation (docs/observability.md).
    trace_id: str | None = None
    traceparent: str | None = None
    # What the run's container used, once the run has ended (pyflue.resources).
    resources: ResourceSummary | None = None
    # Whose run it is: the tenant of the token that created it (which it shares with that
    # tenant's other tokens only), and that token's name, for the audit trail (None: no token
    # is configured, or a `pyflue run` on this machine). See pyflue.tenants.
    tenant: str = "default"
    requested_by: str | None = None


class Artifact(BaseModel):
    """One file a run saved (``harness.artifacts.save``, the agent's ``artifacts`` option):
    listed by ``GET /runs/{run_id}/artifacts``, downloaded by name."""

    name: str = Field(description="its name in the run: a relative path such as "
                                  "`reports/junit.xml` (secrets redacted)")
    size: int = Field(description="bytes")
    sha256: str = Field(description="the SHA-256 of its content, hex")
    content_type: str = Field(description="its media type, guessed from the name")
    path: str = Field(description="the workspace path it was copied from")
    saved_at: datetime


class UploadInfo(BaseModel):
    """One archive sent with an invocation (``--upload DIR[:DEST]``, a multipart part), as
    stored with its run and unpacked into the workspace when the run's container starts."""

    dest: str = Field(description="where it is unpacked, relative to the workspace (`\"\"`: "
                                  "the workspace itself)")
    kind: str = Field(description="`tar`, `tar.gz` or `zip`")
    filename: str | None = Field(None, description="the part's file name, or the folder's name")
    files: int = Field(description="regular files it holds")
    folders: int = Field(0, description="folders it holds")
    bytes: int = Field(description="bytes of its files, unpacked")
    size: int = Field(description="bytes of the archive as stored")
    skipped: list[str] = Field(default_factory=list,
                               description="symlinks inside the tree, not unpacked")

    def path(self, workdir: str = "/workspace") -> str:
        """Where it is unpacked: the absolute path in the workspace."""
        return f"{workdir.rstrip('/')}/{self.dest}" if self.dest else workdir


def end_error(status: RunStatus, error: ErrorInfo | None, reason: str | None) -> ErrorInfo | None:
    """The error a finished run reports: its own, or for a run ended from outside (cancelled,
    timed out, interrupted) one that names the status and why; None for a completed run."""
    if error is not None or status is RunStatus.completed:
        return error
    return ErrorInfo(type=status.value,
                     message=f"run {status.value}: {reason or 'no reason was recorded'}")


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


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (``null``, ``array``, ...), for messages."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int | float, "number"), (str, "string"),
                       (list | tuple, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def check_payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPayload(
            f"payload must be a JSON object, not {json_type(value)}; "
            """wrap it, e.g. '{"items": [...]}'"""
        )
    return value
