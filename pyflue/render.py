"""Rendering runs and events for terminals (pretty) and for programs (json, ndjson)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pyflue.models import Event, EventType, Run


class Format(StrEnum):
    pretty = "pretty"
    json = "json"
    ndjson = "ndjson"


class StreamFormat(StrEnum):
    """Formats for events printed one by one as they happen."""

    pretty = "pretty"
    ndjson = "ndjson"


def event_json(event: Event) -> str:
    return event.model_dump_json()


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
    d = event.data
    head = f"{event.timestamp.strftime('%H:%M:%S.%f')[:-3]} #{event.event_index:<4}"
    t = event.type
    if t is EventType.shell_output:
        marker = "│" if d.get("stream") == "stdout" else "┆"
        lines = str(d.get("text", "")).rstrip("\n").split("\n")
        return "\n".join(f"{head} {marker} {line}" for line in lines)
    if t is EventType.shell_start:
        return f"{head} $ {d.get('command')}  (cwd {d.get('cwd')})"
    if t is EventType.shell_end:
        note = " TIMED OUT" if d.get("timed_out") else ""
        note += " (output truncated)" if d.get("truncated") else ""
        return f"{head} ⏎ exit {d.get('exit_code')} in {d.get('duration_ms')} ms{note}"
    if t is EventType.model_text_delta:
        return None
    if t is EventType.model_turn_start:
        return f"{head} ◇ {d.get('session')} turn {d.get('turn')} ({d.get('model')})"
    if t is EventType.model_turn_end:
        if d.get("error"):
            return f"{head} ◆ turn failed: {d['error'].get('message')}"
        usage = d.get("usage") or {}
        text = _short(str(d.get("text") or "").replace("\n", " ⏎ "), 200)
        return (f"{head} ◆ {text} [{d.get('stop_reason')}, {usage.get('input_tokens')} in / "
                f"{usage.get('output_tokens')} out, {d.get('duration_ms')} ms]")
    if t is EventType.tool_start:
        return f"{head} ⚙ {d.get('name')} {_short(d.get('input'), 160)}"
    if t is EventType.tool_end:
        mark = "✗" if d.get("is_error") else "→"
        output = _short(str(d.get("output") or "").replace("\n", " ⏎ "), 160)
        return f"{head}   {mark} {output} ({d.get('duration_ms')} ms)"
    if t is EventType.log:
        fields = " ".join(f"{k}={_short(v, 60)}" for k, v in (d.get("fields") or {}).items())
        return f"{head} [{d.get('level', 'info')}] {d.get('message')} {fields}".rstrip()
    if t is EventType.run_start:
        again = f", attempt {d['attempt']}" if (d.get("attempt") or 1) > 1 else ""
        return f"{head} ▶ run {event.run_id} ({d.get('workflow')}{again})"
    if t is EventType.run_requeued:
        return f"{head} ↺ back in the queue for attempt {d.get('attempt')}: {d.get('reason')}"
    if t is EventType.run_end:
        took = f" in {d['duration_ms']} ms" if d.get("duration_ms") is not None else ""
        line = f"{head} ■ {d.get('status')}{took}"
        err = d.get("error")
        if err and err.get("type") != d.get("status"):  # else it only restates the reason
            line += f": {err.get('type')}: {err.get('message')}"
        elif d.get("reason"):
            line += f": {d['reason']}"
        return line
    if t is EventType.container_created:
        return f"{head} container {str(d.get('container_id'))[:12]} created from {d.get('image')}"
    if t is EventType.container_exited:
        oom = " (OOM-killed)" if d.get("oom_killed") else ""
        return f"{head} container exited {d.get('exit_code')}{oom}"
    if t in (EventType.container_started, EventType.container_removed):
        return f"{head} container {str(d.get('container_id'))[:12]} {t.value.split('_')[1]}"
    rest = " ".join(f"{k}={_short(v, 60)}" for k, v in d.items())
    return f"{head} {t.value} {rest}"


def run_line(run: Run) -> str:
    took = f"{run.duration_ms} ms" if run.duration_ms is not None else "-"
    when = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{run.run_id:<60} {run.status.value:<11} {when}  {took:>9}  {run.event_count:>5} ev"
