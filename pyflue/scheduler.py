"""The scheduler: a queue kept in the run store, at most N runs at once, cancel.

Every run is recorded before anything is acknowledged: ``queued``, or, when this scheduler has
a free slot and nothing older waits, already taken by it (``running``, its task started at
once). Queued runs are admitted oldest first while fewer than ``max_concurrency`` run, claimed
in one store write (the runner keeps each to its deadline). Cancel stops a queued run at once,
and a running one by cancelling its task: the command in flight is killed, the container
removed, and only then is the run ``cancelled``. On start-up and every lease, runs whose
process is gone are taken back (ended ``interrupted``, or requeued if safe to retry) and
containers of runs that are over reaped; queued runs stay queued and run.

With tenants (``tenant_limits``, ``fair``; see :mod:`pyflue.tenants`), admission picks the
queued runs fairly across tenants (:func:`~pyflue.tenants.fair_pick`): the tenant with the
fewest runs executing goes first, and one at its ``max_concurrency`` waits, wherever its runs
execute (counted in the store). Several workers sharing a store each pick fairly; a tenant may
briefly hold one run more per other worker claiming at the same instant. ``max_queued``: a
submit of a tenant with that many runs queued is refused (:class:`~pyflue.errors.QueueFull`).

While the sandbox engine does not answer (an :class:`~pyflue.engine_watch.EngineWatch`, told of
runs that end ``engine_unavailable``), nothing is admitted: runs stay queued, for a worker whose
engine answers or for this one when its engine is back; a run that waited longer than
``engine_wait`` seconds while the engine was down fails, with a reason naming the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyflue.engine_watch import EngineState, EngineWatch
from pyflue.errors import EngineUnavailable, QueueFull, RunStateConflict
from pyflue.events import EventType
from pyflue.models import ErrorInfo, Run, RunStatus, utcnow
from pyflue.runs import Runner, StopRequest
from pyflue.tenants import DEFAULT_TENANT, Queued, fair_pick
from pyflue.workers import local_owner

if TYPE_CHECKING:
    from pyflue.uploads import StagedUpload

log = logging.getLogger(__name__)

# An idle scheduler (nothing left to take at its last look) claims on a queue signal, and
# otherwise only on every this many admission looks (polls come every second).
IDLE_CLAIM_EVERY = 10
# How many of the oldest queued runs fair admission looks at to pick from.
FAIR_WINDOW = 500


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        *,
        max_concurrency: int = 4,
        poll_interval: float = 1.0,
        engine: EngineWatch | None = None,
        engine_wait: float = 300.0,
        tenant_limits: dict[str, int] | None = None,
        fair: bool = False,
        max_queued: int | None = None,
    ) -> None:
        self.runner = runner
        self.tenant_limits = dict(tenant_limits or {})
        self.fair = fair or bool(self.tenant_limits)
        self.max_queued = max_queued
        self.engine = engine  # None: the engine is taken to answer (a test's fake provider)
        self.engine_wait = engine_wait
        self.store = runner.store
        self.workers = runner.workers
        self.max_concurrency = max_concurrency
        self.poll_interval = poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, StopRequest] = {}
        self._unstarted: set[str] = set()  # tasks created, not begun (see StopRequest.asked)
        # True while the store held no queued run this scheduler could take at its last look:
        # a new run may then start at once, without waiting for admission (order is kept).
        self._backlog_empty = False
        self._backlog_news = 0  # bumped whenever runs may have been queued (see _admit)
        self._reserved = 0  # slots held by submits claiming their run
        self._taken_back: set[str] = set()  # runs stopped here as another worker took them
        self._requests: dict[str, Any] = {}
        # Set when a run this scheduler knows of has finished (its record is final).
        self._finished: dict[str, asyncio.Event] = {}
        self._final: dict[str, Run] = {}  # handed to waiters (wait()) of runs run here
        self._waiters: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._reap_task: asyncio.Task[None] | None = None
        self._next_cancel_scan = 0.0
        self._next_request_scan = 0.0
        self._idle_looks = 0
        self._next_stale_scan = 0.0
        self.worker = local_owner()  # the owner id of the runs this scheduler executes

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        """Recovers from a previous crash, then starts admitting queued runs."""
        await self.store.heartbeat(self.worker)  # before any run of ours can be judged
        # Admission looks at once when a run is queued, by this or (PostgreSQL) any worker.
        self.store.on_queue_change(self._queue_changed)
        if self.engine is not None:
            self.engine.subscribe(self._engine_changed)
        await self._reap()
        self._loop_task = asyncio.create_task(self._admit_loop(), name="pyflue-scheduler")
        self._beat_task = asyncio.create_task(self._beat_loop(), name="pyflue-heartbeat")

    async def _held(self) -> list[Run]:
        """The runs the store says this worker is running."""
        return await self.store.list_runs(status=RunStatus.running, owner=self.worker,
                                          limit=self.max_concurrency + 100)

    async def _drop_runs_taken_back(self) -> None:
        """After a silence longer than the lease: stops the runs another worker has taken back
        from this one meanwhile (ended, or requeued and maybe running elsewhere), so their
        commands and containers stop here too; their outcome here is dropped (see
        Runner._finish)."""
        held = {run.run_id for run in await self._held()}
        for run_id in [r for r in self._tasks if r not in held and r not in self._unstarted]:
            log.warning("run %s was taken back by another worker while this one was cut off "
                        "from the store; stopping it here", run_id)
            self._taken_back.add(run_id)
            self._stop_task(run_id, RunStatus.interrupted,
                            "this worker was taken for lost while it ran")

    async def _take_back_orphans(self) -> None:
        """Runs this worker holds in the store but has no task for (their end could not be
        written): ended or requeued like a lost worker's, rather than left `running`."""
        if self._reserved:  # a claim in flight: its runs get their tasks when it returns
            return
        mine = await self._held()
        if self._reserved:
            return
        for run in mine:
            orphan = "the worker running it could not record its end"
            if run.run_id not in self._tasks and await self.workers.take_back(run, orphan):
                log.warning("run %s was left running by this worker with nothing behind it; "
                            "taken back", run.run_id)

    @property
    def engine_up(self) -> bool:
        return self.engine is None or self.engine.up

    async def _engine_changed(self, state: EngineState) -> None:
        if state.up:  # what queued up meanwhile is admitted now, oldest first
            self._backlog_grew()
            self._wake.set()

    def _engine_failed(self, reason: str) -> None:
        if self.engine is not None:
            self.engine.failed(reason)

    def _backlog_grew(self) -> None:
        """Runs may have been queued: the next admission look claims, and a look already under
        way does not end by marking the backlog empty (see :meth:`_admit`)."""
        self._backlog_empty = False
        self._backlog_news += 1

    def _queue_changed(self) -> None:
        self._backlog_grew()  # maybe older than what is submitted next: admission sees
        self._wake.set()

    async def stop(self, reason: str = "the server stopped") -> None:
        """Stops admitting; running runs end ``interrupted`` with their containers removed, or
        go back to the queue when their workflow is safe to retry (``retry_interrupted``)."""
        for loop_task in (self._loop_task, self._beat_task, self._reap_task):
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
        for run_id in list(self._tasks):
            self._stop_task(run_id, RunStatus.interrupted, reason, requeue=True)
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        try:
            # Signing off with a run of ours still `running` (its end could not be written)
            # would leave it to look alive to every other host: let the lease run out instead.
            if left := await self._held():
                log.warning("run %s could not be ended; this worker's lease is left to run "
                            "out, so another worker takes it back", left[0].run_id)
            else:
                await self.store.remove_worker(self.worker)
        except Exception as exc:  # the store may be gone; the lease runs out by itself
            log.warning("could not sign this worker off: %s", exc)

    async def _beat_loop(self) -> None:
        """Heartbeats (lease/3) for the other workers sharing the store; every lease, a reaper
        pass: runs whose worker stopped beating are taken back (``interrupted``, or requeued
        when safe to retry), and containers left by runs that are over (a removal that failed,
        a crashed `pyflue run`) are removed."""
        lease = self.workers.lease
        beats = 0
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(lease / 3)
            beats += 1
            try:
                await self.store.heartbeat(self.worker)
            except Exception:  # a store hiccup must not stop the heartbeat for good
                log.exception("heartbeat failed; retrying")
                continue
            silent, last_beat = time.monotonic() - last_beat, time.monotonic()
            if silent > lease:  # other workers may have taken this one for lost meanwhile
                await self._drop_runs_taken_back()
            # Apart from the heartbeat, which a slow engine must never hold up (a worker that
            # misses its beats is taken for lost); one pass at a time.
            if beats % 3 == 0 and (self._reap_task is None or self._reap_task.done()):
                self._reap_task = asyncio.create_task(self._reap(), name="pyflue-reaper")

    async def _reap(self) -> None:
        try:
            await self._take_back_orphans()
            reaped = await self.workers.reap()
            if reaped:
                log.warning("reaped the containers of %d finished run(s): %s", len(reaped),
                            ", ".join(reaped))
        except EngineUnavailable as exc:
            self._engine_failed(exc.public_message)
            log.warning("reaper pass failed, next one in %g s: %s", self.workers.lease, exc)
        except Exception as exc:  # the engine or the store may be down (runs will say so)
            log.warning("reaper pass failed, next one in %g s: %s", self.workers.lease,
                        exc)

    async def submit(
        self,
        workflow: str,
        payload: Any,
        *,
        req: Any = None,
        image: str | None = None,
        idempotency_key: str | None = None,
        source: str = "http",
        uploads: Sequence[StagedUpload] = (),
        uploads_from: str | None = None,
        traceparent: str | None = None,
        tenant: str = DEFAULT_TENANT,
        requested_by: str | None = None,
    ) -> tuple[Run, bool]:
        """Records a run, queued or (a free slot, nothing older waiting) taken by this
        scheduler and started; returns it and whether it is new (False: same key seen).
        ``traceparent``: the caller's W3C trace context, continued by the run's trace.
        ``tenant``, ``requested_by``: whose run it is (see :mod:`pyflue.tenants`).
        QueueFull when the tenant has ``max_queued`` runs queued."""
        if idempotency_key is not None:
            existing = await self.store.find_run(workflow, idempotency_key, tenant)
            if existing is not None:
                return existing, False
        await self._check_queue(tenant)
        # A free slot and nothing older waiting: the run is recorded as taken by this worker
        # and starts here at once (where its request is); else it is queued for any worker.
        # A tenant with a quota always goes through admission, which counts its runs.
        take = (self.engine_up and self._backlog_empty
                and tenant not in self.tenant_limits
                and len(self._tasks) + self._reserved < self.max_concurrency)
        self._reserved += int(take)
        # Shielded: once the record exists, a cancelled request must not leave a run taken
        # here with no task to run it.
        recording = asyncio.ensure_future(self.runner.submit(
            workflow, payload, image=image, source=source, idempotency_key=idempotency_key,
            owner=self.worker if take else None, taken=take, uploads=uploads,
            uploads_from=uploads_from, traceparent=traceparent, tenant=tenant,
            requested_by=requested_by,
        ))
        cancelled: asyncio.CancelledError | None = None
        try:
            try:
                run = await asyncio.shield(recording)
            except asyncio.CancelledError as exc:
                cancelled = exc
                run = await recording
        except RunStateConflict:  # the same key raced in from another request
            assert idempotency_key is not None
            found = await self.store.find_run(workflow, idempotency_key, tenant)
            assert found is not None
            return found, False
        finally:
            self._reserved -= int(take)
        if req is not None and cancelled is None:
            self._requests[run.run_id] = req
        if take:
            self._start(run)
        else:
            self._backlog_grew()
            self._wake.set()
        if cancelled is not None:
            raise cancelled
        return run, True

    async def _check_queue(self, tenant: str) -> None:
        if self.max_queued is None:
            return
        queued = await self.store.list_runs(status=RunStatus.queued, tenant=tenant,
                                            limit=self.max_queued)
        if len(queued) >= self.max_queued:
            raise QueueFull(
                f"tenant {tenant!r} has {len(queued)} runs queued, the most it may "
                f"(PYFLUE_TENANT_MAX_QUEUED={self.max_queued}): retry once some have started",
                retry_after=max(1, round(self.poll_interval * 5)))

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> Run:
        """Cancels a queued or running run. RunStateConflict when it has already finished."""
        run = await self.store.get_run(run_id)
        if run.status is RunStatus.queued:
            if ended := await self.workers.end_from_outside(run, RunStatus.cancelled, reason):
                self._requests.pop(run_id, None)
                return ended
            run = await self.store.get_run(run_id)  # admitted meanwhile: cancel it running
        if run.status.finished:
            raise RunStateConflict(
                f"run {run_id} has already finished ({run.status.value}); only queued or "
                "running runs can be cancelled",
                details=run.status.value,
            )
        task = self._tasks.get(run_id)
        if task is None:
            return await self._cancel_elsewhere(run, reason)
        self._stop_task(run_id, RunStatus.cancelled, reason)
        return run

    def _stop_task(self, run_id: str, status: RunStatus, reason: str,
                   requeue: bool = False) -> None:
        """Stops a run of this scheduler's (its end: ``status`` and ``reason``, or back in the
        queue when ``requeue`` and its workflow is safe to retry); one that is being stopped
        already (a cancel, its deadline) keeps that end."""
        task = self._tasks[run_id]
        stop = self._stops.setdefault(run_id, StopRequest())
        if task.cancelling() or stop.asked:
            return
        stop.status, stop.reason, stop.requeue = status, reason, requeue
        if run_id in self._unstarted:
            stop.asked = True  # it sees this as it begins: see StopRequest.asked
        else:
            task.cancel()

    async def _cancel_elsewhere(self, run: Run, reason: str) -> Run:
        """A run another process runs: asked through the store (see Workers.ask_to_cancel)."""
        return await self.workers.ask_to_cancel(run, reason)

    async def _cancel_requested(self) -> None:
        """Acts on cancels other workers recorded for runs this scheduler runs (looked for at
        most once per poll interval: admission also runs on every submit and finish)."""
        now = time.monotonic()
        if not self._tasks or now < self._next_cancel_scan:
            return
        self._next_cancel_scan = now + self.poll_interval
        for run in await self._held():
            task = self._tasks.get(run.run_id)
            if not run.cancel_requested or task is None or task.cancelling():
                continue  # none asked, not ours, or already stopping
            try:
                await self.cancel(run.run_id, run.cancel_requested)
            except RunStateConflict:
                pass  # it finished meanwhile

    async def wait(self, run_id: str) -> Run:
        """Waits until the run has finished and returns its final record.

        A run this scheduler has a task for hands its end over without a store read; any
        other (queued, or run by another worker sharing the store) is followed in the store
        up to its run_end.
        """
        finished = self._finished.get(run_id)
        if finished is not None:
            self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
            try:
                await finished.wait()
                final = self._final.get(run_id)
            finally:
                self._waiters[run_id] -= 1
                if not self._waiters[run_id]:
                    del self._waiters[run_id]
                    self._final.pop(run_id, None)
            if final is not None:
                return final
        run = await self.store.get_run(run_id)
        if not run.status.finished:  # run (or being run) by another worker
            async for event in self.store.subscribe(run_id):
                if event.type is EventType.run_end:
                    break
            run = await self.store.get_run(run_id)
        return run

    def _mark_finished(self, run_id: str) -> None:
        event = self._finished.pop(run_id, None)
        if event is not None:
            event.set()

    async def _admit_loop(self) -> None:
        while True:
            try:
                await self._admit()
            except Exception:  # a store hiccup must not stop admission for good
                log.exception("admitting runs failed; retrying")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _admit(self) -> None:
        """Takes the oldest queued runs for the free slots (in one store write: workers sharing
        the store never take the same run) and starts them."""
        await self._cancel_requested()
        await self._forget_requests()
        if not self.engine_up:  # runs stay queued: for a worker whose engine answers
            await self._fail_stale()
            return
        free = self.max_concurrency - len(self._tasks) - self._reserved
        if free <= 0:
            return
        # With nothing left to take at the last look, only a queue signal (or a slow safety
        # poll, for a PostgreSQL LISTEN connection that is down) makes a claim worth a write.
        news = self._backlog_news
        self._idle_looks = self._idle_looks + 1 if self._backlog_empty else 0
        if self._backlog_empty and self._idle_looks % IDLE_CLAIM_EVERY:
            return
        # The slots are held while the claim is in flight (a submit meanwhile sees them
        # taken), and what was claimed is started even if this is cancelled (a stop).
        self._reserved += free
        only: list[str] | None = None
        waiting = 0
        try:
            if self.fair:
                only, waiting = await self._fair_pick(free)
        except BaseException:
            self._reserved -= free
            raise
        # Not a run that still has a task here: one taken back from this worker while it was
        # cut off from the store (see _drop_runs_taken_back) runs elsewhere, or here later.
        claim = asyncio.ensure_future(self.store.claim_runs(self.worker, free,
                                                            exclude=set(self._tasks),
                                                            only=only))
        try:
            claimed = await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                for run in await claim:
                    self._start(run)
            raise
        finally:
            self._reserved -= free
        for run in claimed:
            self._start(run)
        # Fair admission passed over runs of tenants at their limit: look again next poll. A
        # run queued while this look was under way was perhaps not seen by it: not empty then.
        self._backlog_empty = (len(claimed) < free and waiting <= len(claimed)
                               and self._backlog_news == news)

    async def _fair_pick(self, free: int) -> tuple[list[str], int]:
        """The queued runs to claim, picked fairly across tenants, and how many were
        candidates."""
        queued = [Queued(r.run_id, r.tenant) for r in await self.store.list_runs(
            status=RunStatus.queued, limit=FAIR_WINDOW, oldest_first=True)
            if r.owner is None and r.run_id not in self._tasks]
        if not queued:
            return [], 0
        active: dict[str, int] = {}
        for run in await self.store.list_runs(status=RunStatus.running, limit=100_000):
            active[run.tenant] = active.get(run.tenant, 0) + 1
        return fair_pick(queued, active, self.tenant_limits, free), len(queued)

    async def _fail_stale(self) -> None:
        """Fails the queued runs that have waited longer than ``engine_wait`` while this
        worker's engine was down (looked for once per poll interval). Only runs left for any
        worker: a `pyflue run` process runs its own."""
        now = time.monotonic()
        assert self.engine is not None
        down_for = self.engine.down_for()
        if now < self._next_stale_scan or down_for < self.engine_wait:
            return
        self._next_stale_scan = now + self.poll_interval
        state = self.engine.state
        for run in await self.store.list_runs(status=RunStatus.queued, limit=100,
                                              oldest_first=True):
            waited = (utcnow() - max(run.created_at, state.since)).total_seconds()
            if run.owner is not None or waited < self.engine_wait:
                continue
            message = (
                f"the run was not started: the Docker engine at {state.engine} has not answered "
                f"for {down_for:.0f} s ({state.reason or 'no answer'}), and the run waited "
                f"longer than PYFLUE_ENGINE_WAIT ({self.engine_wait:g} s); start the engine "
                "(`pyflue doctor` checks it) and invoke the run again"
            )
            error = ErrorInfo(type=EngineUnavailable.type, message=message)
            if await self.workers.end_from_outside(run, RunStatus.failed, message, error=error):
                log.warning("run %s failed: %s", run.run_id, message)
                self._requests.pop(run.run_id, None)

    async def _forget_requests(self) -> None:
        """Drops the requests of runs submitted here that another worker took (or that were
        cancelled): looked for once per poll interval, only while there are such runs."""
        waiting = [r for r in self._requests if r not in self._tasks]
        now = time.monotonic()
        if not waiting or now < self._next_request_scan:
            return
        self._next_request_scan = now + self.poll_interval
        queued = await self.store.list_runs(status=RunStatus.queued,
                                            limit=len(waiting) + 100, oldest_first=True)
        still = {r.run_id for r in queued}
        for run_id in waiting:
            if run_id not in still and run_id not in self._tasks:
                self._requests.pop(run_id, None)

    def _start(self, run: Run) -> None:
        self._finished.setdefault(run.run_id, asyncio.Event())
        self._unstarted.add(run.run_id)
        self._tasks[run.run_id] = asyncio.create_task(self._execute(run), name=f"run:{run.run_id}")

    async def _execute(self, run: Run) -> None:
        self._unstarted.discard(run.run_id)  # before any await: from here on, cancel() works
        stop = self._stops.setdefault(run.run_id, StopRequest())
        try:
            final = await self.runner.execute(
                run.run_id, req=self._requests.get(run.run_id), stop=stop, claimed=run
            )
            if run.run_id in self._waiters and final.status.finished:
                self._final[run.run_id] = final  # (not a run put back in the queue)
            if final.error is not None and final.error.type == EngineUnavailable.type:
                self._engine_failed(final.error.message)
        except asyncio.CancelledError:
            pass  # the run is recorded with the status in `stop`
        except Exception:
            log.exception("run %s failed outside its workflow", run.run_id)
        finally:
            self._tasks.pop(run.run_id, None)
            self._stops.pop(run.run_id, None)
            if run.run_id in self._taken_back:  # its next attempt may be queued, and was left
                self._taken_back.discard(run.run_id)  # out of claims while this task lived
                self._backlog_grew()
            self._requests.pop(run.run_id, None)
            self._mark_finished(run.run_id)
            self._wake.set()
