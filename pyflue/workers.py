"""The workers sharing a run store: who runs what, who is gone, and what becomes of their runs.

A worker is one process executing runs (``pyflue serve``, or a ``pyflue run``), known by its
owner id ``host:pid:instance`` (:func:`local_owner`), stored on every run it takes. Workers
sharing a store send heartbeats; one whose process is gone (this host's process table) or whose
heartbeat is older than the lease is taken for lost, and its runs are *taken back*: put back in
the queue as their next attempt when their workflow says it is safe to retry
(``retry_interrupted``), ended ``interrupted`` otherwise. The runner and the scheduler both
build on this module; it knows neither of them.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from ulid import ULID

from pyflue.errors import ConfigError, PyflueError, RunNotFound, RunStateConflict
from pyflue.events import RunEnd, RunRequeued
from pyflue.models import ErrorInfo, Run, RunStatus, utcnow
from pyflue.store.base import NewEvent, RunStore, RunUpdate

if TYPE_CHECKING:
    from pyflue.sandbox.base import SandboxProvider
    from pyflue.workflows import Workflow, WorkflowRegistry

log = logging.getLogger(__name__)
LEFT_SCAN = 200  # ended runs per status a reaper pass looks at for containers left behind

# Tells this process from an earlier one that had the same pid (a restarted container).
INSTANCE = str(ULID())

# The most times one run may go back to the queue, whatever its workflow asks.
MAX_RETRIES = 10


def local_owner() -> str:
    """``host:pid:instance`` of this process, stored on the runs it executes."""
    return f"{socket.gethostname()}:{os.getpid()}:{INSTANCE}"


def retries_for(workflow: Workflow) -> int:
    """How often a run of ``workflow`` may go back to the queue when its worker is lost
    or stops: its module's ``retry_interrupted`` (``True`` for once, or a count up to
    MAX_RETRIES); 0 by default, as re-running a workflow is only safe if it says so."""
    wanted = getattr(workflow.module, "retry_interrupted", False)
    if wanted is True or wanted is False:
        return int(wanted)
    if not isinstance(wanted, int) or not 0 <= wanted <= MAX_RETRIES:
        raise ConfigError(f"workflow {workflow.name!r}: retry_interrupted must be True, "
                          f"False or a count from 0 to {MAX_RETRIES}, not {wanted!r}")
    return wanted


class Workers:
    """Liveness, take-back and requeue over one store (and the containers of its runs)."""

    def __init__(self, *, store: RunStore, registry: WorkflowRegistry,
                 provider: SandboxProvider, lease: float) -> None:
        self.store = store
        self.registry = registry
        self.provider = provider
        self.lease = lease

    def may_requeue(self, run: Run) -> bool:
        """Whether a run whose worker is lost or stopping goes back to the queue: a server's
        run (a `pyflue run` has nobody to pick it up), not asked to cancel, with retries left."""
        if run.source == "cli" or run.cancel_requested:
            return False
        try:
            retries = retries_for(self.registry.get(run.workflow))
        except PyflueError:  # the module no longer loads: it would only fail again
            return False
        return run.attempt <= retries

    async def requeue(self, run: Run, reason: str) -> bool:
        """Puts a running run back in the queue as its next attempt (any worker may take it);
        False if it changed meanwhile. A ``run_requeued`` event says why."""
        attempt = run.attempt + 1
        told = NewEvent.of(RunRequeued(reason=reason, attempt=attempt))
        try:
            await self.store.update_run(run.run_id, RunUpdate(
                status=RunStatus.queued, expect_status=RunStatus.running,
                expect_attempt=run.attempt, expect_no_cancel=True, events=[told],
                extra={"owner": None, "started_at": None, "reason": None, "attempt": attempt},
            ))
        except RunStateConflict:  # ended or requeued elsewhere, or a cancel was asked meanwhile
            return False
        log.warning("run %s went back to the queue (attempt %d): %s", run.run_id, attempt,
                    reason)
        return True

    async def is_live(self, run_id: str) -> bool:
        """Whether a run may still be using its container (for the reaper). Only a running run
        can: a queued one has none yet (containers are made after the claim), so a container
        of a queued run is left from an attempt whose worker was lost."""
        try:
            run = await self.store.get_run(run_id)
        except RunNotFound:
            return False
        if run.status is not RunStatus.running:
            return False
        if await self.owner_is_dead(run.owner):
            await self.take_back(run)  # requeued or not, that container's attempt is over
            return False
        return True

    async def owner_is_dead(self, owner: str | None) -> bool:
        """Whether the process that owns a run is gone.

        On this host its pid says so. A worker on another host sharing the store (PostgreSQL)
        is gone once its heartbeat is older than ``worker_lease`` seconds; an owner that never
        sent one (a `pyflue run` elsewhere) cannot be judged from here and counts as alive.
        """
        if not owner:
            return False
        if _owner_is_dead(owner):  # this host's process table is the surest answer
            return True
        if owner.split(":", 1)[0] == socket.gethostname():
            return False
        age = await self.store.worker_age(owner)  # by the store's clock: no skew between hosts
        return age is not None and age > self.lease

    async def take_back(self, run: Run, reason: str | None = None) -> RunStatus | None:
        """Deals with a run nothing runs any more (by default: its process is gone): a running
        one goes back to the queue when its workflow is safe to retry, any other ends
        ``interrupted``. Returns the status it was given, or None when the run changed
        meanwhile (another worker took it back, or it finished)."""
        reason = reason or f"the process that ran it ({run.owner}) is gone"
        if run.status is RunStatus.running and self.may_requeue(run):
            if await self.requeue(run, reason):
                return RunStatus.queued
        elif await self.end_from_outside(run, RunStatus.interrupted, reason):
            return RunStatus.interrupted
        return None

    async def end_from_outside(self, run: Run, status: RunStatus, reason: str, *,
                               error: ErrorInfo | None = None) -> Run | None:
        """Ends a run that nothing runs (interrupted, cancelled while queued, or failed while
        queued with ``error``): its record and its ``run_end`` in one write, only while it is as
        ``run`` says. None if it changed meanwhile (another worker ended or took it first):
        then nothing is written, so ``run_end`` stays single."""
        try:
            return await self.store.update_run(run.run_id, RunUpdate(
                status=status, finished_at=utcnow(), reason=reason, error=error,
                expect_status=run.status, expect_attempt=run.attempt,
                events=[NewEvent.of(RunEnd.of(status, error=error, reason=reason))],
            ))
        except RunStateConflict:
            return None

    async def ask_to_cancel(self, run: Run, reason: str) -> Run:
        """Cancels a running run that another process runs, through the store: its worker (a
        server's scheduler, or a `pyflue run`, both of which send heartbeats and watch for
        ``cancel_requested``) acts on it within a second. A run whose process is gone ends
        ``interrupted`` here. RunStateConflict when its process takes no requests (it sends
        no heartbeat: an older pyflue)."""
        if await self.owner_is_dead(run.owner):
            # Recorded first, so the run is not put back in the queue (retry_interrupted).
            try:
                asked = await self.store.update_run(run.run_id, RunUpdate(
                    extra={"cancel_requested": reason}, expect_status=RunStatus.running))
            except RunStateConflict:
                return await self.store.get_run(run.run_id)  # it ended meanwhile
            await self.take_back(asked)
            return await self.store.get_run(run.run_id)
        if run.owner is None or await self.store.worker_age(run.owner) is None:
            raise RunStateConflict(
                f"run {run.run_id} is running in another process ({run.owner}) that takes no "
                "cancel requests; stop it there (Ctrl-C)",
                details=run.status.value,
            )
        try:
            return await self.store.update_run(run.run_id, RunUpdate(
                extra={"cancel_requested": reason}, expect_status=RunStatus.running,
            ))
        except RunStateConflict:
            return await self.store.get_run(run.run_id)  # it finished meanwhile

    async def cancel(self, run: Run, reason: str) -> Run:
        """Cancels a run no task of this process runs: a queued one ends ``cancelled`` at
        once, a running one is asked to (:meth:`ask_to_cancel`). RunStateConflict when it has
        already finished."""
        if run.status is RunStatus.queued:
            if ended := await self.end_from_outside(run, RunStatus.cancelled, reason):
                return ended
            run = await self.store.get_run(run.run_id)  # started meanwhile
        if run.status.finished:
            raise RunStateConflict(
                f"run {run.run_id} has already finished ({run.status.value}); only queued or "
                "running runs can be cancelled",
                details=run.status.value,
            )
        return await self.ask_to_cancel(run, reason)

    async def recover(self) -> list[str]:
        """Takes back the runs whose process died (see :meth:`owner_is_dead`): running ones
        go back to the queue if their workflow is safe to retry, and end ``interrupted`` (with
        a ``run_end``) otherwise, as do queued ones that process would have started. Returns
        the ids of the runs it ended or requeued."""
        # Queued runs with an owner were submitted by a process that runs them itself (the
        # CLI); a server's queued runs have none until claimed, and stay queued.
        verdicts: dict[str | None, bool] = {}  # one look per owner
        stale = []
        for status in (RunStatus.running, RunStatus.queued):
            for run in await self.store.list_runs(status=status, limit=1000):
                if run.owner not in verdicts:
                    verdicts[run.owner] = await self.owner_is_dead(run.owner)
                if verdicts[run.owner]:
                    stale.append(run)
        return [run.run_id for run in stale if await self.take_back(run) is not None]

    async def reap(self) -> list[str]:
        """Takes back runs whose process is gone (:meth:`recover`), then removes the
        containers of runs no longer running; returns the runs whose containers went."""
        taken = await self.recover()
        if taken:
            log.warning("took back %d run(s) whose process is gone (interrupted, or requeued "
                        "when safe to retry)", len(taken))
        reaped = await self.provider.reap(self.is_live, self.owner_is_dead)
        return sorted({*reaped, *await self.remove_left()})

    async def remove_left(self, recent: int = LEFT_SCAN) -> list[str]:
        """Removes the containers of ended runs whose removal after the run was never
        recorded (``container_removed_at`` empty: it failed, or its process died first),
        among the ``recent`` newest runs of each ended status; records when it is done.
        Only runs of this process, or of a process of this host that is gone: another
        worker's container lives on its own engine."""
        done = []
        me = local_owner()
        for status in (s for s in RunStatus if s.finished):
            for run in await self.store.list_runs(status=status, limit=recent):
                if run.container_id is None or run.container_removed_at is not None:
                    continue
                if run.owner != me and not await self.owner_is_dead(run.owner):
                    continue
                if await self.provider.remove_left(run.container_id):
                    await self.store.update_run(run.run_id, RunUpdate(
                        extra={"container_removed_at": utcnow()}))
                    done.append(run.run_id)
        return done


def _owner_is_dead(owner: str | None) -> bool:
    """Whether the process that owns a run is gone (only knowable for this host's runs)."""
    host, pid, instance = [*(owner or "").split(":"), "", ""][:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return bool(instance) and instance != INSTANCE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

