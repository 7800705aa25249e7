"""Rendering runs and events for terminals (pretty) and for programs (json, ndjson).

Pretty text may carry colour (ANSI codes from click's ``style``); ``click.echo`` drops them when
the stream is not a terminal or the command's context says no colour (``NO_COLOR``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from pyflue.events import (
    ArtifactSavedEvent,
    ContainerCreatedEvent,
    ContainerExitedEvent,
    ContainerRemovedEvent,
    ContainerStartedEvent,
    EgressEvent,
    Event,
    LogEvent,
    ModelTextDeltaEvent,
    ModelTurnEnd,
    ModelTurnEndEvent,
    ModelTurnStartEvent,
    RunEnd,
    RunEndEvent,
    RunRequeuedEvent,
    RunStartEvent,
    ShellEndEvent,
    ShellOutputEvent,
    ShellStartEvent,
    TokenUsage,
    ToolEndEvent,
    ToolStartEvent,
)
from pyflue.models import Artifact, ResourceSummary, Run, RunStatus, end_error

if TYPE_CHECKING:
    from pyflue.describe import RunDetails


def event_json(event: Event) -> str:
    return str(event.model_dump_json())


def events_document(run_id: str, events: Iterable[Event]) -> str:
    return json.dumps(
        {"run_id": run_id, "events": [e.model_dump(mode="json") for e in events]}, indent=2
    )


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_event(event: Event) -> str | None:
    """One terminal line (or a few, for output chunks) for an event; None to show nothing
    (text deltas: the turn's end shows its whole text)."""
    head = f"{event.timestamp.strftime('%H:%M:%S.%f')[:-3]} #{event.event_index:<4}"
    match event:
        case ShellOutputEvent(data=d):
            marker = "│" if d.stream == "stdout" else "┆"
            return "\n".join(f"{head} {marker} {line}"
                             for line in d.text.rstrip("\n").split("\n"))
        case ShellStartEvent(data=d):
            return f"{head} $ {d.command}  (cwd {d.cwd})"
        case ShellEndEvent(data=d):
            note = " TIMED OUT" if d.timed_out else ""
            note += " (output truncated)" if d.truncated else ""
            # A call cut short has no exit code: say why it ended instead.
            ended = f"exit {d.exit_code}" if d.exit_code is not None else (
                f"cut short ({d.error or 'no exit code'})")
            return f"{head} ⏎ {ended} in {d.duration_ms} ms{note}"
        case ModelTextDeltaEvent():
            return None
        case ModelTurnStartEvent(data=d):
            return f"{head} ◇ {d.session} turn {d.turn} ({d.model})"
        case ModelTurnEndEvent(data=d):
            return f"{head} {_turn_end(d)}"
        case ToolStartEvent(data=d):
            return f"{head} ⚙ {d.name} {_short(d.input, 160)}"
        case ToolEndEvent(data=d):
            mark = "✗" if d.is_error else "→"
            output = _short(d.output.replace("\n", " ⏎ "), 160)
            return f"{head}   {mark} {output} ({d.duration_ms} ms)"
        case LogEvent(data=d):
            fields = " ".join(f"{k}={_short(v, 60)}" for k, v in d.fields.items())
            return f"{head} [{d.level}] {d.message} {fields}".rstrip()
        case RunStartEvent(data=d):
            again = f", attempt {d.attempt}" if d.attempt > 1 else ""
            return f"{head} ▶ run {event.run_id} ({d.workflow}{again})"
        case RunRequeuedEvent(data=d):
            return f"{head} ↺ back in the queue for attempt {d.attempt}: {d.reason}"
        case RunEndEvent(data=d):
            return f"{head} {_run_end(d)}"
        case ContainerCreatedEvent(data=d):
            return f"{head} container {d.container_id[:12]} created from {d.image}"
        case ContainerExitedEvent(data=d):
            oom = " (OOM-killed)" if d.oom_killed else ""
            code = f" {d.exit_code}" if d.exit_code is not None else ""
            return f"{head} container exited{code}{oom}"
        case ContainerStartedEvent(data=d):
            return f"{head} container {d.container_id[:12]} started"
        case ContainerRemovedEvent(data=d):
            return f"{head} container {d.container_id[:12]} removed"
        case ArtifactSavedEvent(data=d):
            return f"{head} ⇪ artifact {d.name} ({d.size} bytes, sha256 {d.sha256[:12]})"
        case EgressEvent(data=d):
            why = f" ({d.reason})" if d.reason else ""
            return (f"{head} egress {d.method} {d.host}:{d.port} {d.decision}{why} "
                    f"↑{d.bytes_up} ↓{d.bytes_down} B {d.duration_ms} ms")
    rest = " ".join(f"{k}={_short(v, 60)}" for k, v in event.data.wire.items())
    return f"{head} {event.type} {rest}"


def _turn_end(d: ModelTurnEnd) -> str:
    if d.error is not None:
        hint = f"; {d.error.hint}" if d.error.hint else ""
        return f"◆ turn failed: {d.error.message}{hint}"
    usage = d.usage or TokenUsage()
    text = _short((d.text or "").replace("\n", " ⏎ "), 200)
    return (f"◆ {text} [{d.stop_reason}, {usage.input_tokens} in / {usage.output_tokens} out, "
            f"{d.duration_ms} ms]")


# The colour of each status word: green done, red failed, yellow stopped, cyan still going.
_STATUS_COLOURS = {
    RunStatus.completed: "green", RunStatus.failed: "red", RunStatus.timed_out: "yellow",
    RunStatus.cancelled: "yellow", RunStatus.interrupted: "yellow", RunStatus.queued: "cyan",
    RunStatus.running: "cyan",
}


def status_word(status: RunStatus, width: int = 0) -> str:
    """``status`` padded to ``width`` and coloured for a terminal."""
    return click.style(f"{status.value:<{width}}", fg=_STATUS_COLOURS.get(status))


def error_word(word: str = "error:") -> str:
    """The word that starts an error line, red and bold on a terminal."""
    return click.style(word, fg="red", bold=True)


def _run_end(d: RunEnd) -> str:
    took = f" in {d.duration_ms} ms" if d.duration_ms is not None else ""
    line = f"■ {status_word(d.status)}{took}"
    if d.error is not None and d.error.type != d.status.value:  # else it restates the reason
        line += f": {d.error.text()}"
    elif d.reason:
        line += f": {d.reason}"
    return line


def run_line(run: Run) -> str:
    took = f"{run.duration_ms} ms" if run.duration_ms is not None else "-"
    when = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
    status = status_word(run.status, 11)
    return f"{run.run_id:<60} {status} {when}  {took:>9}  {run.event_count:>5} ev"


def run_details(details: RunDetails) -> str:
    """A run as ``pyflue show`` prints it: one labelled line per field, then the result or the
    error with its traceback."""
    run = details.run
    rows = [("run", run.run_id), ("workflow", run.workflow), ("status", status_word(run.status)),
            ("reason", run.reason), ("attempt", str(run.attempt)), ("source", run.source),
            ("image", run.image), ("container", details.container_id),
            ("created", _when(run.created_at)),
            ("started", _when(run.started_at, _ms_between(run.created_at, run.started_at),
                              "queued")),
            ("finished", _when(run.finished_at, run.duration_ms, "ran")),
            ("resources", resources_line(run.resources)), ("trace", run.trace_id)]
    lines = [f"{label:<10}{value}" for label, value in rows if value is not None]
    if run.status is RunStatus.completed:
        lines += ["result", _indented(json.dumps(run.result, indent=2, ensure_ascii=False))]
    error = end_error(run.status, run.error, run.reason)
    if error is not None:
        lines.append(f"{error_word('error'.ljust(10))}{error.type}: {error.message}")
        if error.hint:
            lines.append(f"{'hint':<10}{error.hint}")
        if error.details:
            lines.append(_indented(error.details.rstrip("\n")))
    return "\n".join(lines)


def _size(count: int) -> str:
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def resources_line(res: ResourceSummary | None) -> str | None:
    """A run's resource summary on one line: ``peak memory 12.0 MiB of 2.0 GiB, CPU 0.41 s,
    disk 1.0 MiB of 1.0 GiB, net in 0 B out 0 B, files in 3 B out 0 B``."""
    if res is None:
        return None
    parts = []
    if res.peak_memory_bytes is not None:
        limit = f" of {_size(res.memory_limit_bytes)}" if res.memory_limit_bytes else ""
        parts.append(f"peak memory {_size(res.peak_memory_bytes)}{limit}")
    if res.cpu_seconds is not None:
        parts.append(f"CPU {res.cpu_seconds:.2f} s")
    if res.disk_used_bytes is not None:
        total = f" of {_size(res.disk_total_bytes)}" if res.disk_total_bytes else ""
        parts.append(f"disk {_size(res.disk_used_bytes)}{total}")
    if res.bytes_in is not None or res.bytes_out is not None:
        parts.append(f"net in {_size(res.bytes_in or 0)} out {_size(res.bytes_out or 0)}")
    parts.append(f"files in {_size(res.file_bytes_in)} out {_size(res.file_bytes_out)}")
    return ", ".join(parts)


def _when(at: datetime | None, ms: int | None = None, what: str = "") -> str | None:
    if at is None:
        return None
    took = f"  ({what} {ms} ms)" if ms is not None else ""
    return f"{at.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC{took}"


def _ms_between(start: datetime, end: datetime | None) -> int | None:
    return None if end is None else int((end - start).total_seconds() * 1000)


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.split("\n"))


def outcome_document(run: Run) -> dict[str, Any]:
    """A finished run as ``pyflue run --json`` prints it: ``{"run_id", "status", "result",
    "error"}``; ``result`` null unless completed, ``error`` null when completed."""
    error = end_error(run.status, run.error, run.reason)
    return {"run_id": run.run_id, "status": run.status.value,
            "result": run.result if run.status is RunStatus.completed else None,
            "error": error.model_dump(mode="json") if error is not None else None}


def why_not_completed(run: Run) -> str:
    """Why a run did not complete, for the ``error: run ID STATUS: ...`` line: its error as
    ``TYPE: MESSAGE``, or for a run ended from outside (cancelled, timed out, interrupted)
    just the reason, which the status already names."""
    if run.error is not None:
        return run.error.text()
    return run.reason or "no reason was recorded"


def error_json_line(run: Run) -> str | None:
    """A run that did not complete as one JSON line, ``{"type": "error", "run_id", "status",
    "error"}``, for the ndjson event stream (None for a completed run)."""
    doc = outcome_document(run)
    if doc["error"] is None:
        return None
    return json.dumps({"type": "error", "run_id": doc["run_id"], "status": doc["status"],
                       "error": doc["error"]}, ensure_ascii=False)


def artifact_rows(artifacts: list[Artifact]) -> str:
    """A table of artifacts: name, size, sha256 (short), content type, when saved."""
    rows = [("NAME", "SIZE", "SHA256", "TYPE", "SAVED")] + [
        (a.name, str(a.size), a.sha256[:12], a.content_type,
         a.saved_at.strftime("%Y-%m-%d %H:%M:%S")) for a in artifacts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([*(c.ljust(w) if i != 1 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(r[:4], widths, strict=True))),
                                r[4]]) for r in rows)
