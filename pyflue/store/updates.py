"""How a :class:`RunUpdate` changes a run: one rule for every store adapter."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter

from pyflue.errors import RunStateConflict
from pyflue.models import Run
from pyflue.store.base import RunUpdate
from pyflue.store.values import run_fields

# Fields only the store sets: a run's id never changes, and its events count themselves.
STORE_OWNED = frozenset({"run_id", "event_count"})


def update_fields(update: RunUpdate) -> dict[str, Any]:
    """The run fields an update sets, by name, as the store keeps them (:mod:`.values`).

    Raises ValueError when ``extra`` names a field that is not the caller's to set or holds a
    value of the wrong type, and ConfigError for a value the store cannot keep.
    """
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
    return run_fields({name: _typed(name, value) for name, value in fields.items()})


def _typed(name: str, value: Any) -> Any:
    if name not in Run.model_fields or name in STORE_OWNED:
        settable = sorted(set(Run.model_fields) - STORE_OWNED)
        raise ValueError(f"a RunUpdate cannot set {name!r}; it sets {', '.join(settable)}")
    return _field_type(name).validate_python(value)


@cache
def _field_type(name: str) -> TypeAdapter[Any]:
    kind: Any = Run.model_fields[name].annotation  # every Run field has one
    return TypeAdapter(kind)


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

