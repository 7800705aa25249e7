"""A run's status and the bounds of its event cursor: the small vocabulary that the CLI, the
store and the transports share. No dependencies, so the CLI can name them without loading the
models."""

from __future__ import annotations

from enum import StrEnum


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


# Event indexes are 64-bit signed in every store: a cursor past this is bad input, not a 500.
MAX_EVENT_INDEX = 2**63 - 1


def parse_event_index(raw: str) -> int | None:
    """An event cursor from a header or query string (ASCII digits, in range), else None."""
    raw = raw.strip()
    if raw.isascii() and raw.isdigit() and int(raw) <= MAX_EVENT_INDEX:
        return int(raw)
    return None


def past_the_end(run_id: str, event_count: int, after: int) -> str | None:
    """Why resuming a run (``event_count`` events so far) after event ``after`` cannot be
    right, or None. Events are stored before anyone is sent them, so no client of this run
    can hold an index past ``event_count``: it is one of another run's (or of a run deleted
    and made anew)."""
    if after <= event_count:
        return None
    return (f"event {after} is past the last event of run {run_id} ({event_count}): resume "
            "with an index this run's stream gave you, or 0 to replay it from the start")
