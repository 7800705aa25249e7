"""How a :class:`RunUpdate` changes a run: one rule for every store adapter."""

from __future__ import annotations

from typing import Any

from pyflue.errors import RunStateConflict
from pyflue.models import Run
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


def conflict(run: Run, update: RunUpdate) -> RunStateConflict | None:
    """Why ``update`` may not apply to ``run`` as it is (its expectations), else None."""
    if update.expect_status is not None and run.status is not update.expect_status:
        return RunStateConflict(
            f"run {run.run_id} is {run.status.value}, not {update.expect_status.value}",
            details=run.status.value,
        )
    if update.expect_attempt is not None and run.attempt != update.expect_attempt:
        return RunStateConflict(
            f"run {run.run_id} is at attempt {run.attempt}, not {update.expect_attempt}",
            details=run.status.value,
        )
    if update.expect_no_cancel and run.cancel_requested:
        return RunStateConflict(
            f"run {run.run_id} was asked to cancel: {run.cancel_requested}",
            details=run.status.value,
        )
    return None


def apply_update(run: Run, update: RunUpdate) -> Run:
    return run.model_copy(update=update_fields(update))
