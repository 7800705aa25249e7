"""What is meant for the server's operator and not for API clients: the hint of a stored error
(a ``pyflue`` command to try). Every HTTP and WebSocket answer about runs passes through here;
with ``PYFLUE_DEBUG=1`` (``debug``) everything is kept."""

from __future__ import annotations

from typing import TypeVar

from pyflue.events import Event
from pyflue.models import ErrorInfo, Run

E = TypeVar("E", bound=Event)


def public_error(error: ErrorInfo | None, debug: bool) -> ErrorInfo | None:
    """The error without its hint (unless ``debug``)."""
    if debug or error is None or error.hint is None:
        return error
    return error.model_copy(update={"hint": None})


def public_run(run: Run, debug: bool) -> Run:
    """The run record as API clients see it."""
    if debug or run.error is None or run.error.hint is None:
        return run
    return run.model_copy(update={"error": public_error(run.error, debug)})


def public_event(event: E, debug: bool) -> E:
    """The event as API clients see it: an error it carries (run_end's, a failed model
    turn's) without its hint."""
    error = getattr(event.data, "error", None)
    if debug or not isinstance(error, ErrorInfo) or error.hint is None:
        return event
    # Built anew from its JSON: event payloads cache their wire form, which a copy would keep.
    doc = event.model_dump(mode="json")
    doc["data"]["error"].pop("hint", None)
    return type(event).model_validate(doc)


def public_message(error: ErrorInfo, debug: bool) -> str:
    """An error's message for an error body: with its hint only in ``debug``."""
    return f"{error.message}; {error.hint}" if debug and error.hint else error.message
