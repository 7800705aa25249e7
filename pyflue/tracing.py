"""Traces of runs over OTLP, after the OpenTelemetry GenAI conventions (docs/observability.md).

Off unless the standard ``OTEL_*`` variables ask for traces (:func:`tracing_wanted`), and the
``otel`` extra is installed (``pip install './pyflue[otel]'`` from a checkout); until then nothing
of OpenTelemetry is imported and a run costs nothing more. On, each run is one trace: a root span
``invoke_workflow {workflow}`` from the run's creation to its end, with children for the time
it waited in the queue, its container's create, start and removal, each shell call
(``execute_tool shell``), file operation, model turn (``chat {model}``, with
``gen_ai.usage.*``) and tool call (``execute_tool {tool}``). The spans are made from the run's
events (:mod:`pyflue.observe`), and their text attributes from the events' redacted form, so
no secret granted to the run reaches an attribute. A run invoked with a W3C ``traceparent``
continues that trace; the run record keeps its ``trace_id`` either way.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyflue.errors import ConfigError
from pyflue.events import (
    ContainerCreated,
    ContainerExited,
    ContainerRemoved,
    ContainerStarted,
    EventData,
    FileOp,
    FileRead,
    FileWrite,
    Log,
    ModelTurnEnd,
    ModelTurnStart,
    ShellEnd,
    ShellStart,
    ToolEnd,
    ToolStart,
)
from pyflue.models import Run, RunStatus

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True)
class TraceParent:
    """A W3C ``traceparent``: the caller's trace and span."""

    trace_id: str
    span_id: str
    flags: str

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace context of a ``traceparent`` header; None when there is none or it is not
    valid (the W3C rule: an invalid one is ignored, and a new trace starts)."""
    if not value:
        return None
    found = _TRACEPARENT.fullmatch(value.strip().lower())
    if found is None:
        return None
    version, trace_id, span_id, flags = found.groups()
    if version == "ff" or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return TraceParent(trace_id, span_id, flags)


def new_trace_id() -> str:
    """A random trace id (32 hex digits, never all zeros)."""
    while (value := secrets.token_hex(16)) == "0" * 32:
        pass
    return value


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces: ``OTEL_TRACES_EXPORTER`` other than
    ``none``, or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); never with ``OTEL_SDK_DISABLED=true``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


# The trace id the next root span takes (a run's own, chosen when it was submitted).
_NEXT_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "pyflue_next_trace_id", default=None)


def open_tracer(env: Mapping[str, str]) -> RunTracer | None:
    """A run tracer exporting as ``env``'s OTEL_* variables say, or None when they ask for no
    traces. ConfigError when they do but the ``otel`` extra is missing or an exporter is
    unknown."""
    if not tracing_wanted(env):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        raise ConfigError(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed: install "
            "pyflue with its otel extra (pip install './pyflue[otel]' from a checkout, see "
            "docs/install.md), or unset OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_ENDPOINT"
        ) from None

    class RunIds(RandomIdGenerator):
        def generate_trace_id(self) -> int:
            wanted = _NEXT_TRACE_ID.get()
            return wanted if wanted is not None else super().generate_trace_id()

    provider = TracerProvider(resource=Resource.create({"service.name": env.get(
        "OTEL_SERVICE_NAME", "pyflue")}), id_generator=RunIds())
    provider.add_span_processor(BatchSpanProcessor(_exporter(env)))
    return RunTracer(provider)


def _exporter(env: Mapping[str, str]) -> Any:
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={kind!r} is not an exporter pyflue knows: "
                          "use otlp or console")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc"
                                                          else "http")
        raise ConfigError(f"the OTLP {protocol} exporter is not installed: pip install "
                          f"{package}") from None
    # The endpoint as ``env`` has it (the exporter would read os.environ); the other
    # OTEL_EXPORTER_OTLP_* variables (headers, timeout, certificates) it reads itself.
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is None and base and protocol != "grpc":
        endpoint = base.rstrip("/") + "/v1/traces"  # the spec's rule for the base endpoint
    return OTLPSpanExporter(endpoint=endpoint or base or None)


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


class RunTracer:
    """A run observer (:mod:`pyflue.observe`) that makes each run a trace."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("pyflue")

    def began(self, run: Run) -> RunSpans:
        return RunSpans(self.tracer, run)

    def close(self) -> None:
        """Exports what is left and stops (blocking: call it on a thread)."""
        self.provider.shutdown()


class RunSpans:
    """The spans of one run, opened and closed as its events come."""

    def __init__(self, tracer: Tracer, run: Run) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._trace = trace
        parent = parse_traceparent(run.traceparent)
        context = None
        if parent is not None:
            remote = trace.NonRecordingSpan(trace.SpanContext(
                int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                trace_flags=trace.TraceFlags(int(parent.flags, 16))))
            context = trace.set_span_in_context(remote)
        token = _NEXT_TRACE_ID.set(int(run.trace_id, 16) if run.trace_id else None)
        try:
            self.root: Span = tracer.start_span(
                f"invoke_workflow {run.workflow}", context=context,
                start_time=_ns(run.created_at), attributes={
                    "gen_ai.operation.name": "invoke_workflow",
                    "pyflue.workflow": run.workflow, "pyflue.run_id": run.run_id,
                    "pyflue.attempt": run.attempt, "pyflue.source": run.source})
        finally:
            _NEXT_TRACE_ID.reset(token)
        self._in_root = trace.set_span_in_context(self.root)
        if run.started_at is not None:
            self._span("queue_wait", run.created_at).end(_ns(run.started_at))
        self._open: dict[str, Span] = {}  # shell calls, model turns, tool calls
        self._tools: list[str] = []  # tool calls under way, innermost last
        self._created: datetime | None = None
        self._exited: datetime | None = None

    def _span(self, name: str, at: datetime, attributes: Mapping[str, Any] | None = None,
              *, under_tool: bool = False) -> Span:
        context = self._in_root
        if under_tool and self._tools and self._tools[-1] in self._open:
            context = self._trace.set_span_in_context(self._open[self._tools[-1]])
        return self._tracer.start_span(name, context=context, start_time=_ns(at),
                                       attributes=attributes)

    def _close(self, key: str, at: datetime, attributes: Mapping[str, Any],
               error: str | None = None) -> None:
        span = self._open.pop(key, None)
        if span is None:
            return
        span.set_attributes(dict(attributes))
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end(_ns(at))

    def event(self, data: EventData, clean: Mapping[str, Any], at: datetime) -> None:
        handler = _HANDLERS.get(type(data))
        if handler is not None:
            handler(self, data, clean, at)

    def store_write(self, op: str, seconds: float) -> None:
        pass

    def ended(self, run: Run) -> None:
        end = _ns(run.finished_at) if run.finished_at else None
        for span in self._open.values():  # cut short by the run's end
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "the run ended"))
            span.end(end)
        self._open.clear()
        self.root.set_attribute("pyflue.status", run.status.value)
        if run.status is not RunStatus.completed:
            message = run.error.message if run.error else run.status.value
            self.root.set_attribute("error.type", run.error.type if run.error else
                                    run.status.value)
            self.root.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
        self.root.end(end)

    # -- one method per event type that makes or closes a span ----------------------------------

    def _created_(self, data: ContainerCreated, clean: Mapping[str, Any], at: datetime) -> None:
        self._created = at
        if data.create_ms is not None:
            start = datetime.fromtimestamp(at.timestamp() - data.create_ms / 1000, at.tzinfo)
            self._span("create_container", start, {
                "container.id": data.container_id, "container.image.name": clean["image"],
                "pyflue.runtime": data.runtime, "pyflue.network": clean["network"],
            }).end(_ns(at))

    def _started(self, data: ContainerStarted, clean: Mapping[str, Any], at: datetime) -> None:
        start = self._created if data.launch == "cold" and self._created else (
            datetime.fromtimestamp(at.timestamp() - (data.start_ms or 0) / 1000, at.tzinfo))
        attributes: dict[str, Any] = {"container.id": data.container_id,
                                      "pyflue.launch": data.launch}
        if data.channel is not None:
            attributes["pyflue.channel"] = data.channel
        self._span("start_container", start, attributes).end(_ns(at))

    def _exited_(self, data: ContainerExited, clean: Mapping[str, Any], at: datetime) -> None:
        self._exited = at

    def _removed(self, data: ContainerRemoved, clean: Mapping[str, Any], at: datetime) -> None:
        self._span("remove_container", self._exited or at, {
            "container.id": data.container_id, "pyflue.deferred": data.deferred,
        }).end(_ns(at))

    def _shell_start(self, data: ShellStart, clean: Mapping[str, Any], at: datetime) -> None:
        self._open[f"shell:{data.shell_id}"] = self._span("execute_tool shell", at, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "shell",
            "gen_ai.tool.type": "function", "gen_ai.tool.call.id": data.shell_id,
            "process.command_line": clean["command"], "pyflue.cwd": clean["cwd"],
        }, under_tool=True)

    def _shell_end(self, data: ShellEnd, clean: Mapping[str, Any], at: datetime) -> None:
        attributes: dict[str, Any] = {"pyflue.timed_out": data.timed_out}
        if data.exit_code is not None:
            attributes["process.exit.code"] = data.exit_code
        self._close(f"shell:{data.shell_id}", at, attributes,
                    error=clean.get("error") if data.exit_code is None else None)

    def _file(self, data: FileRead | FileWrite | FileOp, clean: Mapping[str, Any],
              at: datetime) -> None:
        op = data.op if isinstance(data, FileOp) else data.type.value
        attributes: dict[str, Any] = {"file.path": clean["path"], "pyflue.file.op": op}
        if data.bytes is not None:
            attributes["pyflue.file.bytes"] = data.bytes
        self._span(f"file {op}", at, attributes, under_tool=True).end(_ns(at))

    def _turn_start(self, data: ModelTurnStart, clean: Mapping[str, Any], at: datetime) -> None:
        provider, _, _name = data.model.partition("/")
        self._open[f"turn:{data.session}:{data.turn}"] = self._span(f"chat {data.model}", at, {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": clean["model"],
            "gen_ai.provider.name": provider, "gen_ai.conversation.id": clean["session"],
        })

    def _turn_end(self, data: ModelTurnEnd, clean: Mapping[str, Any], at: datetime) -> None:
        attributes: dict[str, Any] = {}
        if data.api_model:
            attributes["gen_ai.response.model"] = clean["api_model"]
        if data.stop_reason:
            attributes["gen_ai.response.finish_reasons"] = [clean["stop_reason"]]
        if data.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = data.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = data.usage.output_tokens
        error = None
        if data.error is not None:
            attributes["error.type"] = clean["error"]["type"]
            error = clean["error"]["message"]
        self._close(f"turn:{data.session}:{data.turn}", at, attributes, error=error)

    def _tool_start(self, data: ToolStart, clean: Mapping[str, Any], at: datetime) -> None:
        key = f"tool:{data.tool_use_id}"
        self._open[key] = self._span(f"execute_tool {data.name}", at, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": clean["name"],
            "gen_ai.tool.type": "function", "gen_ai.tool.call.id": clean["tool_use_id"],
        })
        self._tools.append(key)

    def _tool_end(self, data: ToolEnd, clean: Mapping[str, Any], at: datetime) -> None:
        key = f"tool:{data.tool_use_id}"
        if key in self._tools:
            self._tools.remove(key)
        self._close(key, at, {}, error=clean["output"][:200] if data.is_error else None)

    def _log(self, data: Log, clean: Mapping[str, Any], at: datetime) -> None:
        self.root.add_event("log", {"log.level": data.level, "log.message": clean["message"]},
                            timestamp=_ns(at))


_HANDLERS: dict[type[EventData], Any] = {
    ContainerCreated: RunSpans._created_, ContainerStarted: RunSpans._started,
    ContainerExited: RunSpans._exited_, ContainerRemoved: RunSpans._removed,
    ShellStart: RunSpans._shell_start, ShellEnd: RunSpans._shell_end,
    FileRead: RunSpans._file, FileWrite: RunSpans._file, FileOp: RunSpans._file,
    ModelTurnStart: RunSpans._turn_start, ModelTurnEnd: RunSpans._turn_end,
    ToolStart: RunSpans._tool_start, ToolEnd: RunSpans._tool_end, Log: RunSpans._log,
}
