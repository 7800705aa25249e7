"""How a :class:`RunUpdate` changes a run: one rule for every store adapter."""

from __future__ import annotations

from typing import Any

from pyflue.errors import RunStateConflict
from pyflue.models import Run, RunStatus
from pyflue.store.base import RunUpdate


def update_fields(update: RunUpdate) -> dict[str, Any]:
    """The run fields an update sets, by name."""
    fields: dict[str, Any] = {
        name: getattr(update, name)
        for name in (
            "status", "error", "reason", "image", "started_at", "finished_at", "duration_ms"
        )
        if getattr(update, name) is not None
    }
    if update.has_result:
        fields["result"] = update.result
    fields.update(update.extra)
    return fields


def attempt_conflict(run: Run, expected: int) -> RunStateConflict:
    return RunStateConflict(
        f"run {run.run_id} is at attempt {run.attempt}, not {expected}", details=run.status.value,
    )


def state_conflict(run: Run, expected: RunStatus) -> RunStateConflict:
    return RunStateConflict(
        f"run {run.run_id} is {run.status.value}, not {expected.value}",
        details=run.status.value,
    )


def apply_update(run: Run, update: RunUpdate) -> Run:
    return run.model_copy(update=update_fields(update))
