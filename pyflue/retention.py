"""Retention: forgetting finished runs, one at a time or by age.

:func:`forget_run` is the one place that deletes everything a run owns: first what lives
outside the run store, through the hooks (the artifact store registers one: ``async def
hook(run_id)``, told before the run's record goes, so a hook that fails leaves the run listed
and the delete can be tried again), then the record, its events and its uploads in one store
write (:meth:`pyflue.store.base.RunStore.delete_run`). ``DELETE /runs/{run_id}``,
``pyflue runs prune`` and the server's ``PYFLUE_RETENTION`` schedule all go through it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pyflue.errors import ConfigError, RunStateConflict
from pyflue.models import Run, RunStatus, utcnow
from pyflue.store.base import RunStore

log = logging.getLogger(__name__)

# Told the id of a finished run before its record is deleted; deletes what it keeps of it.
ForgetHook = Callable[[str], Awaitable[None]]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PAGE = 200


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` as a duration; ValueError with an example."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an age: write it like 30d, 12h, 90m, 2w or 45s")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


@dataclass
class Retention:
    """Forgets runs of ``store``; ``hooks`` delete what lives elsewhere (artifacts)."""

    store: RunStore
    hooks: list[ForgetHook] = field(default_factory=list)

    async def forget(self, run_id: str) -> Run:
        """Deletes a finished run and all it owns; returns the record as it was.
        RunNotFound for an unknown run; RunStateConflict for one still queued or running."""
        run = await self.store.get_run(run_id)
        return await forget_run(self.store, run, self.hooks)

    async def prune(self, older_than: timedelta, *,
                    statuses: Collection[RunStatus] | None = None,
                    dry_run: bool = False, now: datetime | None = None) -> list[Run]:
        """Forgets the finished runs (of ``statuses``, default every finished one) that
        finished more than ``older_than`` ago; returns them, oldest first. ``dry_run``: only
        returns them."""
        for status in statuses or ():
            if not status.finished:
                raise ConfigError(f"--status {status.value}: only finished runs are pruned "
                                  "(completed, failed, cancelled, timed_out, interrupted)")
        cutoff = (now or utcnow()) - older_than
        chosen = await self._older(cutoff, statuses)
        if not dry_run:
            for run in chosen:
                await forget_run(self.store, run, self.hooks)
        return chosen

    async def _older(self, cutoff: datetime,
                     statuses: Collection[RunStatus] | None) -> list[Run]:
        chosen: list[Run] = []
        cursor: str | None = None
        while True:  # oldest first: a run created after the cutoff cannot have ended before it
            page = await self.store.list_runs(oldest_first=True, limit=PAGE, before=cursor)
            for run in page:
                if run.created_at >= cutoff:
                    return chosen
                ended = run.finished_at or run.created_at
                if run.status.finished and ended < cutoff and (
                        not statuses or run.status in statuses):
                    chosen.append(run)
            if len(page) < PAGE:
                return chosen
            cursor = page[-1].run_id


async def forget_run(store: RunStore, run: Run, hooks: Collection[ForgetHook] = ()) -> Run:
    """Deletes everything ``run`` owns: the hooks' part, then the store's (record, events,
    uploads). RunStateConflict when it has not finished (nothing is deleted)."""
    if not run.status.finished:
        raise RunStateConflict(
            f"run {run.run_id} is {run.status.value}: only a finished run can be deleted; "
            "cancel it first (POST /runs/{run_id}/cancel, `pyflue cancel`) and delete it once "
            "it has ended", details=run.status.value)
    for hook in hooks:
        await hook(run.run_id)
    await store.delete_run(run.run_id)
    return run


async def keep_pruning(retention: Retention, older_than: timedelta, every: float) -> None:
    """``pyflue serve``'s schedule (PYFLUE_RETENTION): a pass at once, then every ``every``
    seconds, until cancelled. A pass that fails is logged and tried again next time."""
    while True:
        try:
            gone = await retention.prune(older_than)
            if gone:
                log.info("retention: deleted %d run(s) finished over %s ago", len(gone),
                         older_than)
        except Exception:  # the store may be down for a while: the next pass tries again
            log.exception("retention: a pass failed")
        await asyncio.sleep(every)
