"""What a run store keeps: one rule for every adapter, so a value one adapter refuses or
changes, every adapter refuses or changes alike.

- JSON values (a run's payload and result, an event's data) are kept in their JSON form, as
  pydantic's JSON mode makes it: tuples and sets become lists, keys strings, non-finite floats
  null, and nothing is shared with the caller's objects. A value with no JSON form is
  :class:`~pyflue.errors.ConfigError`.
- Timestamps are kept in UTC; a naive one is taken to be UTC already.
- Text fits its SQL column (:mod:`pyflue.store.schema` sets the lengths) and holds no NUL
  character (PostgreSQL text cannot); integers fit their 32-bit column. Else ConfigError,
  naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python
from sqlalchemy import Column, Integer, String

from pyflue.errors import ConfigError
from pyflue.models import Run
from pyflue.store.base import NewEvent
from pyflue.store.schema import runs, workers

# The largest LIMIT and event cursor every database takes: 64-bit signed.
MAX_BOUND = 2**63 - 1
_INT32 = 2**31


def json_form(value: Any, what: str) -> Any:
    """``value`` as stored: its JSON form, in new containers."""
    try:
        return to_jsonable_python(value, inf_nan_mode="null")
    except PydanticSerializationError as exc:
        raise ConfigError(
            f"the run store keeps {what} as JSON, and {exc}; pass dicts, lists, strings, "
            "numbers, booleans or None"
        ) from None


def utc(value: datetime) -> datetime:
    """A timestamp as stored: in UTC (a naive one is taken to be UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_text(what: str, value: str, length: int | None) -> str:
    """``value`` if a text column of ``length`` (None: unbounded) can keep it, else ConfigError."""
    if "\x00" in value:
        raise ConfigError(f"{what} {value!r} holds a NUL character, which the run store "
                          "cannot keep; remove it")
    if length is not None and len(value) > length:
        raise ConfigError(f"{what} is {len(value)} characters long; the run store keeps at "
                          f"most {length}: shorten it")
    return value


def check_worker(worker: str) -> str:
    """A worker id as stored (see :func:`check_text`)."""
    return check_text("worker id", worker, _length(workers.c.worker))


def check_upload_owner(run_id: str) -> str:
    """The run id an upload is stored under (see :func:`check_text`)."""
    return check_text("run id", run_id, _length(runs.c.run_id))


def run_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Run fields (by name, already of the :class:`Run` field types) as stored."""
    return {name: _run_field(name, value) for name, value in fields.items()}


def new_run(run: Run) -> Run:
    """The record ``create_run`` stores for ``run``: as stored, and with no events yet."""
    fields = run_fields(dict(run) | {"event_count": 0})
    return Run.model_validate(fields)


def _run_field(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in ("payload", "result"):
        return json_form(value, f"a run's {name}")
    if isinstance(value, BaseModel):  # the error: a copy, so it shares nothing with the caller
        return value.model_copy()
    if isinstance(value, datetime):
        return utc(value)
    column = runs.c[name]
    if isinstance(value, str):
        return check_text(f"the run's {name}", value, _length(column))
    if isinstance(value, int) and isinstance(column.type, Integer):
        return _check_int32(name, value)
    return value


def _check_int32(name: str, value: int) -> int:
    if not -_INT32 <= value < _INT32:
        raise ConfigError(f"the run's {name} {value} is out of range: the run store keeps "
                          f"integers from {-_INT32} to {_INT32 - 1}")
    return value


def _length(column: Column[Any]) -> int | None:
    return column.type.length if isinstance(column.type, String) else None


def new_events(events: Sequence[NewEvent]) -> list[NewEvent]:
    """Events as stored: their data in its JSON form, their timestamps in UTC."""
    return [NewEvent(e.type, json_form(e.data, f"a {e.type.value} event's data"),
                     utc(e.timestamp)) for e in events]
