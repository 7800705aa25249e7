"""Observers of runs: what metrics, traces and resource use are fed from, in one place.

A run's events already say everything that happens in it. Rather than calls sprinkled through
the runtime, the runner asks each :class:`RunObserver` for a :class:`RunWatch` when a run
begins; the run's recorder hands every event it records to that watch (its payload model, the
same payload with the run's secrets redacted, and its timestamp), and the runner tells it of
store writes and of the run's final record. A watch runs on the event loop, synchronously, in
the emitter's path: it must be cheap and must not raise (an error is logged and dropped, so
an observer can never break a run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pyflue.events import EventData
from pyflue.models import Run

log = logging.getLogger(__name__)


class RunWatch(Protocol):
    """One run's observer, from its start to its final record."""

    def event(self, data: EventData, clean: Mapping[str, Any], at: datetime) -> None:
        """An event the run records: ``data`` as emitted (read its numbers and fixed
        vocabulary), ``clean`` its wire form with the run's secrets redacted (read any text
        there), ``at`` its timestamp."""
        ...

    def store_write(self, op: str, seconds: float) -> None:
        """A write of the run's to the store (``append_events``, ``update_run``) took this long."""
        ...

    def ended(self, run: Run) -> None:
        """The run's final record (or its record as it went back to the queue)."""
        ...


class RunObserver(Protocol):
    def began(self, run: Run) -> RunWatch | None:
        """A run (its record, ``running``) starts executing in this process: its watch, or
        None to watch nothing of it."""
        ...


class Watches:
    """Several watches as one; each one's failure is logged and kept from the others."""

    def __init__(self, watches: Sequence[RunWatch]) -> None:
        self._watches = list(watches)

    def add(self, watch: RunWatch) -> None:
        self._watches.append(watch)

    def event(self, data: EventData, clean: Mapping[str, Any], at: datetime) -> None:
        for watch in self._watches:
            try:
                watch.event(data, clean, at)
            except Exception:
                log.exception("observer %s failed on a %s event", type(watch).__name__,
                              data.type.value)

    def store_write(self, op: str, seconds: float) -> None:
        for watch in self._watches:
            try:
                watch.store_write(op, seconds)
            except Exception:
                log.exception("observer %s failed on a store write", type(watch).__name__)

    def ended(self, run: Run) -> None:
        for watch in self._watches:
            try:
                watch.ended(run)
            except Exception:
                log.exception("observer %s failed on the end of %s", type(watch).__name__,
                              run.run_id)


def watch_run(observers: Sequence[RunObserver], run: Run) -> Watches:
    """The watches of ``observers`` over ``run`` (those that want to watch it)."""
    watches: list[RunWatch] = []
    for observer in observers:
        try:
            watch = observer.began(run)
        except Exception:
            log.exception("observer %s failed on the start of %s", type(observer).__name__,
                          run.run_id)
            continue
        if watch is not None:
            watches.append(watch)
    return Watches(watches)
