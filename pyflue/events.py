"""Run events: one typed model per event type, and the tagged union every surface speaks.

An event on the wire is ``{"run_id", "event_index", "type", "timestamp", "data"}``; ``type`` is
the discriminator and ``data`` the type's own payload. Runtime code emits a payload model
(``recorder.emit(ShellStart(shell_id=..., ...))``); the store gives it its index and hands back
the event (``ShellStartEvent``); the HTTP routes, SSE, WebSocket, the Python client and the CLI
renderer all read the same classes. A type this version does not know (from a newer server)
still parses, as :class:`UnknownEvent`. docs/events.md documents every field and is checked
against these models by the tests.

Payloads can also be read like the dicts they are on the wire (``event.data["exit_code"]``,
``event.data.get("text")``), as the Python client's users did before the models existed.
"""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    MISSING,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from pyflue.models import ErrorInfo, RunStatus, UploadInfo, end_error


class EventType(StrEnum):
    """Every event type a run can record. Their payloads are the models below."""

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
    artifact_saved = "artifact_saved"
    egress = "egress"


def _absent(value: Any) -> bool:
    return value is None


def _optional(description: str) -> Any:
    """A key that is left out of the payload when it has no value (docs: "absent otherwise")."""
    return Field(None, description=description, exclude_if=_absent)


class EventData(BaseModel):
    """The payload of one event. Keys a newer server adds are kept (``model_extra``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: ClassVar[EventType]

    @cached_property
    def wire(self) -> dict[str, Any]:
        """The payload as it is sent: a JSON-ready dict."""
        return self.model_dump(mode="json")

    def __getitem__(self, key: str) -> Any:
        return self.wire[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.wire.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.wire

    def keys(self) -> Iterator[str]:
        return iter(self.wire)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self.wire.items())

    def values(self) -> Iterator[Any]:
        return iter(self.wire.values())

    def __len__(self) -> int:
        return len(self.wire)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.wire)  # the keys, as a dict's (pydantic would yield (name, value))

    def scrubbed(self, scrub: Callable[[Any], Any]) -> dict[str, Any]:
        """The wire form with ``scrub`` (secret redaction) applied to what may hold any text:
        free-form values (strings, and dicts and lists whole, their keys included). The
        payload's own structure is kept: its keys, the keys of the models inside it, and its
        fixed vocabulary (literals, enums, numbers), so the result is still a valid payload."""
        return _scrubbed(type(self), self.wire, scrub)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):  # compared with its wire form, as a dict would be
            return self.wire == dict(other)
        return super().__eq__(other)

    __hash__ = BaseModel.__hash__


def _scrubbed(model: type[BaseModel], wire: dict[str, Any],
              scrub: Callable[[Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in wire.items():
        field = model.model_fields.get(key)
        kind = _kind(field.annotation) if field is not None else None
        if value is None or kind == "fixed":
            out[key] = value
        elif isinstance(kind, type) and isinstance(value, dict):
            out[key] = _scrubbed(kind, value, scrub)  # a model inside: keep its keys
        else:
            out[key] = scrub(value)  # free-form text, or a key a newer version added
    return out


def _kind(annotation: Any) -> str | type[BaseModel] | None:
    """``fixed`` for a vocabulary that holds no free text (literals, enums, numbers, bools),
    the model class for a nested model, else None (free-form)."""
    options = [a for a in (get_args(annotation) if get_origin(annotation) in (Union,
               types.UnionType) else (annotation,)) if a is not type(None)]
    if all(get_origin(a) is Literal or a in (bool, int, float)
           or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in options):
        return "fixed"
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None


# -- run lifecycle -----------------------------------------------------------------------------


class RunStart(EventData):
    """Always the first event of a run (and of each attempt of a requeued run)."""

    type = EventType.run_start
    workflow: str = Field(description="the workflow name")
    payload: dict[str, Any] | MISSING = Field(
        MISSING, description="the payload object, when it is at most 64 KiB of JSON (the run "
        "record keeps it once: a larger one is read from there)")
    payload_truncated: bool | None = _optional(
        "only for a payload over 64 KiB of JSON: `true`, and `payload` is left out; read it "
        "from the run record at `run_path`")
    run_path: str | None = _optional(
        "only with `payload_truncated`: `/runs/{run_id}`, the path of the run record (its "
        "`payload` key) on the server")
    image: str | None = Field(description="the `--image` override, or `null`")
    source: str = Field(description="who started it: `cli` (`pyflue run`), `http` or "
                                    "`websocket`")
    attempt: int = Field(1, description="1, or which attempt of a requeued run this is (see "
                                        "`run_requeued`)")
    uploads: list[UploadInfo] | None = _optional(
        "only for a run invoked with uploads (`--upload`, multipart archive parts): each one's "
        "`dest`, `kind`, `files`, `bytes`...; they are unpacked into the workspace when the "
        "run's container starts")

    @classmethod
    def of(cls, *, workflow: str, payload: dict[str, Any], run_id: str, image: str | None,
           source: str, attempt: int, uploads: list[UploadInfo],
           requested_by: str | None = None) -> RunStart:
        """The start of a run: its payload carried when it is at most
        :data:`RESULT_INLINE_LIMIT` bytes of JSON, else a pointer to ``/runs/{run_id}``."""
        carried: dict[str, Any] = {"payload": payload}
        if len(json.dumps(payload, ensure_ascii=False).encode()) > RESULT_INLINE_LIMIT:
            carried = {"payload_truncated": True, "run_path": f"/runs/{run_id}"}
        return cls(workflow=workflow, image=image, source=source, attempt=attempt,
                   uploads=uploads or None, requested_by=requested_by, **carried)
    requested_by: str | None = Field(
        None, description="the name of the API token that created the run (its tenant's "
                          "audit trail); `null` without tokens, and for `pyflue run`")


# The largest result run_end carries itself, in bytes of JSON; a larger one is read from the run.
RESULT_INLINE_LIMIT = 64 * 1024


class RunEnd(EventData):
    """Always the last event of a run, stored in the same write as its final record."""

    type = EventType.run_end
    status: RunStatus = Field(description="`completed`, `failed`, `cancelled`, `timed_out` or "
                                          "`interrupted`")
    is_error: bool = Field(description="`false` only for `completed`")
    error: ErrorInfo | None = Field(
        description="`null` for a completed run; `{\"type\", \"message\", \"details\"}` "
                    "otherwise: a failed run's exception (`details` is the traceback), or for "
                    "a run ended from outside one naming its status and reason; `hint`, a "
                    "`pyflue` command for the machine's operator, where there is one (left out "
                    "over HTTP and WebSocket unless the server runs with PYFLUE_DEBUG=1)")
    reason: str | None = _optional(
        "only when there is one: why a run was ended from outside (`interrupted by SIGTERM`, "
        "`cancelled by request`, `the run's deadline of 3 s passed`), or the sandbox limits it "
        "hit")
    duration_ms: int | None = _optional(
        "the run's duration in milliseconds, container removal included (absent for a run "
        "cancelled while queued or marked `interrupted`)")
    result: Any | MISSING = Field(
        MISSING, description="only for a completed run whose result is at most "
        "64 KiB of JSON: the run's result, as `GET /runs/{run_id}` has it (granted secrets "
        "redacted, NaN and infinities `null`)")
    result_truncated: bool | None = _optional(
        "only for a completed run whose result is over 64 KiB of JSON: `true`, and `result` is "
        "left out; read it from the run record at `run_path`")
    run_path: str | None = _optional(
        "only with `result_truncated`: `/runs/{run_id}`, the path of the run record (its "
        "`result` key) on the server")

    @classmethod
    def of(cls, status: RunStatus, *, error: ErrorInfo | None = None,
           reason: str | None = None, duration_ms: int | None = None,
           result: Any = None, run_id: str = "") -> RunEnd:
        """The end of a run: ``error`` is the run's own, or for a run ended from outside one
        that names the status and why; None only for a completed run. A completed run's
        ``result`` (already in its JSON form) is carried when it is at most
        :data:`RESULT_INLINE_LIMIT` bytes of JSON, else a pointer to ``/runs/{run_id}``."""
        return cls(status=status, is_error=status is not RunStatus.completed,
                   error=end_error(status, error, reason), reason=reason,
                   duration_ms=duration_ms,
                   **(_carried(result, run_id) if status is RunStatus.completed else {}))


def _carried(result: Any, run_id: str) -> dict[str, Any]:
    """A completed run's result as run_end carries it: itself, or a pointer when too large."""
    if len(json.dumps(result, ensure_ascii=False).encode()) <= RESULT_INLINE_LIMIT:
        return {"result": result}
    return {"result_truncated": True, "run_path": f"/runs/{run_id}"}


class RunRequeued(EventData):
    """A retry-safe run went back to the queue instead of ending `interrupted`."""

    type = EventType.run_requeued
    reason: str = Field(description="why: `the server stopped`, `the process that ran it "
                                    "(host:pid:instance) is gone`")
    attempt: int = Field(description="the number of the attempt to come (2 for the first "
                                     "retry)")


class Log(EventData):
    """A line from `ctx.log.info/warn/error`, or pyflue's own (level `error`)."""

    type = EventType.log
    level: Literal["info", "warn", "error"] = Field(description="`info`, `warn` or `error`")
    message: str = Field(description="the message string")
    fields: dict[str, Any] = Field(default_factory=dict,
                                   description="the keyword arguments, e.g. `{\"name\": \"docs\"}`")


# -- the container -----------------------------------------------------------------------------


class ContainerCreated(EventData):
    type = EventType.container_created
    container_id: str = Field(description="the full Docker container id")
    name: str = Field(description="the container's (and volume's) name, "
                                  "`pyflue-<workflow>-<ulid>` (`pyflue-pool-<ulid>` for a "
                                  "container from the warm pool)")
    image: str = Field(description="the image it was created from")
    network: str = Field(description="the network mode, e.g. `none`")
    runtime: str = Field(description="`runc`, or the runtime asked for (e.g. `runsc`)")
    create_ms: int | None = _optional(
        "how long the engine took to create it (volume and container), in milliseconds; "
        "absent for a container from the warm pool")


class ContainerStarted(EventData):
    type = EventType.container_started
    container_id: str = Field(description="the full Docker container id")
    launch: Literal["warm", "cold"] = Field(
        "cold", description="`warm`: claimed from the warm pool (created and started before "
                            "the run); `cold`: created and started for this run")
    channel: Literal["helper", "exec"] | None = _optional(
        "how commands and files reach the container: `helper` (the persistent channel, see "
        "docs/sandbox.md#the-channel) or `exec` (one `docker exec` per command); absent for "
        "sandboxes that are not Docker containers")
    channel_reason: str | None = _optional(
        "why the channel is `exec` (no helper binary, an engine not on a unix socket, an image "
        "where the helper cannot run); absent otherwise")
    start_ms: int | None = _optional(
        "milliseconds from asking for the container to its being ready for a first command "
        "(create, start and channel for a cold one; the claim and channel for a warm one)")


class ContainerExited(EventData):
    """At the end of the run, just before removal."""

    type = EventType.container_exited
    container_id: str = Field(description="the full Docker container id")
    exit_code: int | None = Field(
        description="the container's exit code; `137` when it was still running and pyflue "
                    "stops it (the normal case)")
    oom_killed: bool = Field(description="`true` if the kernel killed a process for exceeding "
                                         "the memory limit")
    stopped_by: Literal["pyflue", "itself"] = Field(
        description="`pyflue` (still running at the end of the run) or `itself` (it had "
                    "already exited)")


class ContainerRemoved(EventData):
    type = EventType.container_removed
    container_id: str = Field(description="the full Docker container id")
    removed: bool = Field(description="`true` unless removing the container failed")
    deferred: bool = Field(
        False, description="`true` when the removal finishes in the background after the run's "
                           "end (a warm container: the result does not wait for it); the run's "
                           "`container_removed_at` says when it was done")


class Egress(EventData):
    type = EventType.egress
    host: str = Field(description="the host name the sandbox asked for (CONNECT target or the "
                                  "absolute URL's host; an address when it asked for one)")
    port: int = Field(description="the port asked for")
    method: str = Field(description="`CONNECT` (HTTPS) or the HTTP method of a plain request "
                                    "(and of the request inside HTTPS to a host of egress "
                                    "secrets, which the proxy reads)")
    decision: Literal["allowed", "denied"] = Field(
        description="`allowed`: the proxy connected; `denied`: refused before any connection "
                    "(or, for an SNI mismatch, before any byte went out)")
    reason: str | None = _optional(
        "why it was denied (`not in the allow-list`, `port`, `private address`, "
        "`sni mismatch`, ...) or why an allowed connection failed; absent otherwise")
    address: str | None = _optional("the address the proxy connected to; absent when denied")
    bytes_up: int = Field(0, description="bytes from the sandbox to the host")
    bytes_down: int = Field(0, description="bytes from the host to the sandbox")
    duration_ms: int = Field(0, description="from the request to the connection's end")
    secrets: list[str] | None = _optional(
        "names of the egress secrets put into the request (their values never appear)")


# -- shell commands ----------------------------------------------------------------------------


class ShellStart(EventData):
    type = EventType.shell_start
    shell_id: str = Field(description="the call's id (`sh-1`, `sh-2`, ...; numbered per run)")
    command: str = Field(description="the command string")
    cwd: str = Field(description="the absolute folder it runs in")
    timeout: float = Field(description="the timeout in seconds")


class ShellOutput(EventData):
    """A chunk of a command's output, as it arrives."""

    type = EventType.shell_output
    shell_id: str = Field(description="the call's id")
    stream: Literal["stdout", "stderr"] = Field(description="`stdout` or `stderr`")
    text: str = Field(description="the chunk, decoded as UTF-8 (invalid bytes replaced)")


class ShellEnd(EventData):
    type = EventType.shell_end
    shell_id: str = Field(description="the call's id")
    exit_code: int | None = Field(description="the command's exit code; `124` on timeout; "
                                              "`null` for a call cut short")
    timed_out: bool = Field(description="`true` if the timeout passed")
    duration_ms: int = Field(description="wall time of the call")
    stdout_bytes: int | None = _optional("total bytes produced on stdout, dropped bytes "
                                         "included (only when the call ran to its end)")
    stderr_bytes: int | None = _optional("total bytes produced on stderr, dropped bytes "
                                         "included (only when the call ran to its end)")
    truncated: bool | None = _optional("`true` if either stream went over the output cap "
                                       "(only when the call ran to its end)")
    killed: Literal["group", "all"] | None = _optional(
        "only after a timeout: `group` (the command's process group was killed) or `all` "
        "(every process in the container was killed)")
    limits: list[str] | None = _optional("only when a sandbox limit was hit: e.g. `[\"memory\"]`")
    sandbox_stopped: str | None = _optional("only when the container stopped under the "
                                           "command: why")
    error: str | None = _optional("only for a call cut short: `exit_code` is then `null`, and "
                                 "this says why (`cancelled`, or the error)")


class SandboxLimit(EventData):
    """The sandbox hit a limit while a command ran; the run's `reason` names it too."""

    type = EventType.sandbox_limit
    kind: str = Field(description="the limit: `memory` (an OOM kill) or `pids`")
    shell_id: str = Field(description="the command it hit under")
    message: str = Field(description="what happened, in words")


# -- files -------------------------------------------------------------------------------------


class FileRead(EventData):
    type = EventType.file_read
    path: str = Field(description="absolute, after resolving symlinks")
    bytes: int = Field(description="size read")


class FileWrite(EventData):
    type = EventType.file_write
    path: str = Field(description="absolute, after resolving symlinks")
    bytes: int = Field(description="size written")


class FileOp(EventData):
    type = EventType.file_op
    op: Literal["mkdir", "rm", "upload", "download"] = Field(
        description="`mkdir`, `rm`, `upload` or `download`")
    path: str = Field(description="the workspace path, absolute")
    dest: str | None = _optional("`download` only: the local destination")
    files: int | None = _optional("`upload` and `download`: files copied")
    folders: int | None = _optional("`upload` and `download`: folders copied")
    bytes: int | None = _optional("`upload` and `download`: bytes copied")
    skipped: list[str] | None = _optional("`upload` and `download`: names skipped (links, "
                                         "devices, unsafe names; at most 100)")
    skipped_count: int | None = _optional("`upload` and `download`: how many were skipped")


class ArtifactSaved(EventData):
    type = EventType.artifact_saved
    name: str = Field(description="the artifact's name (`GET /runs/{run_id}/artifacts/{name}`), "
                                  "secrets redacted")
    path: str = Field(description="the workspace path it was copied from, absolute")
    size: int = Field(description="its size in bytes")
    sha256: str = Field(description="the SHA-256 of its content, hex")
    content_type: str = Field(description="its media type, guessed from the name")


# -- model turns and tool calls ----------------------------------------------------------------


class TokenUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class ModelTurnStart(EventData):
    type = EventType.model_turn_start
    session: str = Field(description="the session's name")
    turn: int = Field(description="1-based, per prompt")
    model: str = Field(description="the model string")


class ModelTextDelta(EventData):
    """While the model streams text."""

    type = EventType.model_text_delta
    session: str = Field(description="the session's name")
    turn: int = Field(description="1-based, per prompt")
    text: str = Field(description="a chunk of the model's text")


class ModelTurnEnd(EventData):
    type = EventType.model_turn_end
    session: str = Field(description="the session's name")
    turn: int = Field(description="1-based, per prompt")
    model: str = Field(description="the model string")
    duration_ms: int = Field(description="wall time of the turn")
    api_model: str | None = _optional("only for a turn that succeeded: the model the "
                                      "provider reported")
    stop_reason: str | None = _optional("only for a turn that succeeded: why it ended, e.g. "
                                        "`end_turn`, `tool_use`")
    usage: TokenUsage | None = _optional(
        "only for a turn that succeeded: `input_tokens`, `output_tokens`, "
        "`cache_creation_input_tokens`, `cache_read_input_tokens`")
    text: str | None = _optional("only for a turn that succeeded: its text, cut at 2,000 "
                                 "characters")
    error: ErrorInfo | None = _optional("only for a turn that failed: `type`, `message`, "
                                        "`details` (and `hint`, as in `run_end`)")


class ToolStart(EventData):
    type = EventType.tool_start
    session: str = Field(description="the session's name")
    tool_use_id: str = Field(description="the model's id for the call")
    name: str = Field(description="the tool's name")
    input: dict[str, Any] = Field(description="the arguments the model gave")


class ToolEnd(EventData):
    type = EventType.tool_end
    session: str = Field(description="the session's name")
    tool_use_id: str = Field(description="the model's id for the call")
    name: str = Field(description="the tool's name")
    is_error: bool = Field(description="`true` if the call failed")
    output: str = Field(description="what the model was shown, cut at 2,000 characters")
    duration_ms: int = Field(description="wall time of the call")


# -- the envelope ------------------------------------------------------------------------------


class Event(BaseModel):
    """One stored run event. ``event_index`` is 1-based and gap-free per run."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    event_index: int = Field(ge=1)
    type: EventType | str
    timestamp: datetime
    data: EventData


class RunStartEvent(Event):
    type: Literal[EventType.run_start] = EventType.run_start
    data: RunStart


class RunEndEvent(Event):
    type: Literal[EventType.run_end] = EventType.run_end
    data: RunEnd


class RunRequeuedEvent(Event):
    type: Literal[EventType.run_requeued] = EventType.run_requeued
    data: RunRequeued


class LogEvent(Event):
    type: Literal[EventType.log] = EventType.log
    data: Log


class ContainerCreatedEvent(Event):
    type: Literal[EventType.container_created] = EventType.container_created
    data: ContainerCreated


class ContainerStartedEvent(Event):
    type: Literal[EventType.container_started] = EventType.container_started
    data: ContainerStarted


class ContainerExitedEvent(Event):
    type: Literal[EventType.container_exited] = EventType.container_exited
    data: ContainerExited


class ContainerRemovedEvent(Event):
    type: Literal[EventType.container_removed] = EventType.container_removed
    data: ContainerRemoved


class ShellStartEvent(Event):
    type: Literal[EventType.shell_start] = EventType.shell_start
    data: ShellStart


class ShellOutputEvent(Event):
    type: Literal[EventType.shell_output] = EventType.shell_output
    data: ShellOutput


class ShellEndEvent(Event):
    type: Literal[EventType.shell_end] = EventType.shell_end
    data: ShellEnd


class SandboxLimitEvent(Event):
    type: Literal[EventType.sandbox_limit] = EventType.sandbox_limit
    data: SandboxLimit


class FileReadEvent(Event):
    type: Literal[EventType.file_read] = EventType.file_read
    data: FileRead


class FileWriteEvent(Event):
    type: Literal[EventType.file_write] = EventType.file_write
    data: FileWrite


class FileOpEvent(Event):
    type: Literal[EventType.file_op] = EventType.file_op
    data: FileOp


class ArtifactSavedEvent(Event):
    type: Literal[EventType.artifact_saved] = EventType.artifact_saved
    data: ArtifactSaved


class ModelTurnStartEvent(Event):
    type: Literal[EventType.model_turn_start] = EventType.model_turn_start
    data: ModelTurnStart


class ModelTextDeltaEvent(Event):
    type: Literal[EventType.model_text_delta] = EventType.model_text_delta
    data: ModelTextDelta


class ModelTurnEndEvent(Event):
    type: Literal[EventType.model_turn_end] = EventType.model_turn_end
    data: ModelTurnEnd


class ToolStartEvent(Event):
    type: Literal[EventType.tool_start] = EventType.tool_start
    data: ToolStart


class ToolEndEvent(Event):
    type: Literal[EventType.tool_end] = EventType.tool_end
    data: ToolEnd


class EgressEvent(Event):
    type: Literal[EventType.egress] = EventType.egress
    data: Egress


class UnknownEvent(Event):
    """An event of a type this version of pyflue does not know (sent by a newer server)."""

    type: str
    data: EventData


# Every known event class by its type; a test pins that each EventType has one.
EVENT_CLASSES: dict[EventType, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RunStartEvent, RunEndEvent, RunRequeuedEvent, LogEvent, ContainerCreatedEvent,
        ContainerStartedEvent, ContainerExitedEvent, ContainerRemovedEvent, ShellStartEvent,
        ShellOutputEvent, ShellEndEvent, SandboxLimitEvent, FileReadEvent, FileWriteEvent,
        FileOpEvent, ModelTurnStartEvent, ModelTextDeltaEvent, ModelTurnEndEvent,
        ToolStartEvent, ToolEndEvent, ArtifactSavedEvent, EgressEvent,
    )
}
# The payload model of each type (what ``recorder.emit`` takes).
DATA_CLASSES: dict[EventType, type[EventData]] = {
    t: cls.model_fields["data"].annotation for t, cls in EVENT_CLASSES.items()  # type: ignore[misc]
}

_KNOWN = frozenset(t.value for t in EventType)


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(kind) if kind in _KNOWN else "unknown"


# The tagged union of the known event classes, as the server documents it (OpenAPI).
KnownEvent = Annotated[
    RunStartEvent | RunEndEvent | RunRequeuedEvent | LogEvent | ContainerCreatedEvent
    | ContainerStartedEvent | ContainerExitedEvent | ContainerRemovedEvent | ShellStartEvent
    | ShellOutputEvent | ShellEndEvent | SandboxLimitEvent | FileReadEvent | FileWriteEvent
    | FileOpEvent | ModelTurnStartEvent | ModelTextDeltaEvent | ModelTurnEndEvent
    | ToolStartEvent | ToolEndEvent | ArtifactSavedEvent | EgressEvent,
    Field(discriminator="type"),
]

# ... and as every reader parses it: an unknown type becomes an UnknownEvent, not an error.
AnyEvent = Annotated[
    Annotated[KnownEvent, Tag("known")] | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(lambda v: "unknown" if _tag(v) == "unknown" else "known"),
]

_EVENT = TypeAdapter[Event](AnyEvent)


def parse_event(value: Any) -> Event:
    """An event from its wire form (a dict, as JSON-decoded): the class of its type. An event
    this version cannot read as its type (a newer server's new value or shape) is an
    :class:`UnknownEvent` with its data kept; ValidationError only when it is not an event."""
    try:
        return _EVENT.validate_python(value)
    except ValidationError:
        return UnknownEvent.model_validate(value)


def parse_event_json(text: str | bytes) -> Event:
    """An event from its JSON text (as :func:`parse_event`)."""
    try:
        return _EVENT.validate_json(text)
    except ValidationError:
        return UnknownEvent.model_validate_json(text)


__all__ = [
    "DATA_CLASSES",
    "EVENT_CLASSES",
    "AnyEvent",
    "ArtifactSaved",
    "ArtifactSavedEvent",
    "ContainerCreated",
    "ContainerCreatedEvent",
    "ContainerExited",
    "ContainerExitedEvent",
    "ContainerRemoved",
    "ContainerRemovedEvent",
    "ContainerStarted",
    "ContainerStartedEvent",
    "Egress",
    "EgressEvent",
    "Event",
    "EventData",
    "EventType",
    "FileOp",
    "FileOpEvent",
    "FileRead",
    "FileReadEvent",
    "FileWrite",
    "FileWriteEvent",
    "KnownEvent",
    "Log",
    "LogEvent",
    "ModelTextDelta",
    "ModelTextDeltaEvent",
    "ModelTurnEnd",
    "ModelTurnEndEvent",
    "ModelTurnStart",
    "ModelTurnStartEvent",
    "RunEnd",
    "RunEndEvent",
    "RunRequeued",
    "RunRequeuedEvent",
    "RunStart",
    "RunStartEvent",
    "SandboxLimit",
    "SandboxLimitEvent",
    "ShellEnd",
    "ShellEndEvent",
    "ShellOutput",
    "ShellOutputEvent",
    "ShellStart",
    "ShellStartEvent",
    "TokenUsage",
    "ToolEnd",
    "ToolEndEvent",
    "ToolStart",
    "ToolStartEvent",
    "UnknownEvent",
    "parse_event",
    "parse_event_json",
]
