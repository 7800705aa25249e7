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


def pretty_event(event: Event) -> str:
    """One terminal line (or a few, for output chunks) for an event."""
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
    if t is EventType.log:
        fields = " ".join(f"{k}={_short(v, 60)}" for k, v in (d.get("fields") or {}).items())
        return f"{head} [{d.get('level', 'info')}] {d.get('message')} {fields}".rstrip()
    if t is EventType.run_start:
        return f"{head} ▶ run {event.run_id} ({d.get('workflow')})"
    if t is EventType.run_end:
        line = f"{head} ■ {d.get('status')} in {d.get('duration_ms')} ms"
        err = d.get("error")
        if err:
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
