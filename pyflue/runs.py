"""The run executor: one run from its record to its end, container removed whatever happens.

``submit`` writes the run record (``queued``) before anything else happens; ``execute`` runs
it: ``running``, ``run_start``, the workflow with its ``FlueContext``, the container removed,
``run_end``, and the final status (``completed``, ``failed``, ``cancelled``). What becomes of a
run whose worker is lost (requeue, ``interrupted``) is :mod:`pyflue.workers`' business. The core
imports neither docker nor FastAPI: it talks to the ports in :mod:`pyflue.sandbox.base` and
:mod:`pyflue.store.base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import math
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from pyflue._bridge import in_daemon_thread, run_to_completion
from pyflue.agent_config import AgentConfig
from pyflue.agents import Agent
from pyflue.artifacts import ArtifactStore, artifact_store
from pyflue.context import FlueContext
from pyflue.errors import (
    ConfigError,
    PyflueError,
    RunStateConflict,
)
from pyflue.events import Log, RunEnd, RunStart
from pyflue.harness import Harness
from pyflue.llm import ModelRegistry, ModelResolver
from pyflue.models import (
    ErrorInfo,
    Run,
    RunStatus,
    UploadInfo,
    check_payload,
    new_run_id,
    utcnow,
)
from pyflue.observe import RunObserver, watch_run
from pyflue.placing import place_uploads
from pyflue.recorder import RunLog, RunRecorder
from pyflue.resources import ResourceMeter
from pyflue.retention import Retention
from pyflue.sandbox.base import EgressSecret, Sandbox, SandboxProvider, SandboxSpec
from pyflue.sandbox.policy import placeholder, spec_for
from pyflue.secrets import grant
from pyflue.sessions import Session
from pyflue.settings import Settings
from pyflue.store.base import RunStore, RunUpdate
from pyflue.tools import as_tool
from pyflue.tracing import RunTracer, new_trace_id, parse_traceparent
from pyflue.uploads import StagedUpload, spooled
from pyflue.workers import Workers, local_owner, retries_for
from pyflue.workflows import Workflow, WorkflowRegistry

log = logging.getLogger(__name__)


# How long collecting the agents' `artifacts` at a run's end may take.
COLLECT_SECONDS = 300.0


class DeadlinePassed(Exception):
    """The run's deadline passed while its workflow ran (internal: the run ends timed_out)."""



@dataclass
class StopRequest:
    """Why a running run's task is being cancelled: the status it ends with, and the reason.
    ``requeue``: put the run back in the queue instead when its workflow is safe to retry."""

    status: RunStatus = RunStatus.cancelled
    reason: str = "cancelled while running"
    requeue: bool = False
    # Set instead of cancelling the task when it has not begun (a task cancelled before its
    # first step never runs its body, so the run it claimed would be left `running`).
    asked: bool = False


def error_info(exc: BaseException) -> ErrorInfo:
    details = "".join(traceback.format_exception(exc))
    if isinstance(exc, PyflueError):
        return ErrorInfo.of(exc, details)
    return ErrorInfo(type=type(exc).__name__, message=str(exc), details=details)


class Runner:
    """Executes runs of one project's workflows against a store and a sandbox provider."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: RunStore,
        provider: SandboxProvider,
        registry: WorkflowRegistry,
        env: Mapping[str, str] | None = None,
        models: ModelResolver | None = None,
        artifacts: ArtifactStore | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> None:
        self.settings = settings
        # Where runs' saved files go: PYFLUE_ARTIFACTS_DIR unless one is given.
        self.artifacts = artifacts or artifact_store(settings, store)
        # Told of every run this process executes: metrics, traces (pyflue.observe).
        self.observers = list(observers)
        self.traced = any(isinstance(o, RunTracer) for o in self.observers)
        # The resource meters of the runs executing here, for GET /runs/{run_id}/metrics.
        self.meters: dict[str, ResourceMeter] = {}
        self.models: ModelResolver = models or ModelRegistry(settings.models)
        self.store = store
        self.provider = provider
        self.registry = registry
        self.env = dict(env if env is not None else {})
        self.workers = Workers(store=store, registry=registry, provider=provider,
                               lease=settings.server.worker_lease)
        self._removals: set[asyncio.Task[None]] = set()  # see _note_removed
        # Deleting runs (DELETE /runs/{id}, prune, PYFLUE_RETENTION): what a run keeps outside
        # the run store (its artifacts' files) goes first, then its record.
        self.retention = Retention(store, [self.artifacts.delete_run])

    async def submit(
        self,
        workflow: str,
        payload: Any,
        *,
        image: str | None = None,
        source: str = "cli",
        owner: str | None = "",
        idempotency_key: str | None = None,
        taken: bool = False,
        uploads: Sequence[StagedUpload] = (),
        uploads_from: str | None = None,
        traceparent: str | None = None,
        tenant: str = "default",
        requested_by: str | None = None,
    ) -> Run:
        """Validates the invocation and records the run as ``queued``. Nothing runs yet.

        ``tenant`` and ``requested_by``: whose run it is and the name of the token that asked
        (see :mod:`pyflue.tenants`).

        ``owner`` defaults to this process (it will run it); ``None`` leaves the run for a
        scheduler to claim. ``taken``: record it as already claimed by ``owner``
        (``running``), for :meth:`execute` with ``claimed=``; no other worker sees it queued.
        ``uploads`` (checked archives on this host's disk) and the uploads of the run
        ``uploads_from`` (a rerun) are stored with the run before its record exists, so
        whichever worker takes it finds them; the caller removes its spool files.
        ``traceparent``: the W3C trace context of the caller's trace, which the run's
        continues (an invalid one is ignored, as the standard says).
        """
        self.registry.get(workflow)  # WorkflowNotFound / WorkflowLoadError before any record
        payload = check_payload(payload)
        now = utcnow()
        run_id = new_run_id(workflow)
        try:
            if uploads_from is not None:
                await self.store.copy_uploads(uploads_from, run_id)
            for staged in uploads:
                await self.store.add_upload(run_id, staged.info, _read_spool(staged.path))
            return await self._record(workflow, payload, run_id, now, image=image,
                                      source=source, owner=owner,
                                      idempotency_key=idempotency_key, taken=taken,
                                      traceparent=traceparent, tenant=tenant,
                                      requested_by=requested_by)
        except BaseException:
            if uploads or uploads_from is not None:  # the run was not created: nor are they
                with contextlib.suppress(Exception):
                    await self.store.delete_run(run_id)
            raise

    async def _record(self, workflow: str, payload: Any, run_id: str, now: datetime, *,
                      image: str | None, source: str, owner: str | None,
                      idempotency_key: str | None, taken: bool,
                      traceparent: str | None, tenant: str,
                      requested_by: str | None) -> Run:
        parent = parse_traceparent(traceparent)
        trace_id = parent.trace_id if parent else (new_trace_id() if self.traced else None)
        run = Run(
            run_id=run_id,
            workflow=workflow,
            status=RunStatus.running if taken else RunStatus.queued,
            payload=check_payload(payload),
            image=image,
            source=source,
            owner=local_owner() if owner == "" else owner,
            created_at=now,
            started_at=now if taken else None,
            idempotency_key=idempotency_key,
            trace_id=trace_id,
            traceparent=parent.header if parent else None,
            tenant=tenant,
            requested_by=requested_by,
        )
        return await self.store.create_run(run)

    async def execute(
        self, run_id: str, *, req: Any = None, stop: StopRequest | None = None,
        claimed: Run | None = None,
    ) -> Run:
        """Runs a queued run to its end and returns the final record; ``claimed``: a run this
        process already took (``store.claim_runs``), to run as it is.

        Cancelling the task ends the run ``cancelled`` (or as ``stop`` says) after its container
        is removed. A workflow still running at its deadline (:meth:`deadline_for`) is stopped
        the same way and ends ``timed_out``.
        """
        early_cancel: asyncio.CancelledError | None = None
        if claimed is not None:
            run = claimed
            if stop is not None and stop.asked:  # stopped before its task began
                early_cancel = asyncio.CancelledError(stop.reason)
        else:
            # Claiming is conditional: a run cancelled meanwhile, or claimed by another worker,
            # raises RunStateConflict here and is not run. A cancel that lands while the claim
            # is in flight must not leave a claimed run behind: the claim completes, then the
            # run ends through _finish like any cancelled run.
            claim = asyncio.ensure_future(self.store.update_run(run_id, RunUpdate(
                status=RunStatus.running, started_at=utcnow(), expect_status=RunStatus.queued,
                extra={"owner": local_owner()},
            )))
            try:
                run = await asyncio.shield(claim)
            except asyncio.CancelledError as exc:
                run, early_cancel = await claim, exc
        if self.traced and run.trace_id is None:  # queued by a process that traced nothing
            run = run.model_copy(update={"trace_id": new_trace_id()})
        meter = ResourceMeter(self.settings.observability.resource_interval,
                              persist=functools.partial(self.store.put_samples, run_id))
        watches = watch_run(self.observers, run)
        watches.add(meter)
        self.meters[run_id] = meter
        recorder = RunRecorder(self.store, run_id, watch=watches)
        uploads: list[UploadInfo] = []
        with contextlib.suppress(Exception):  # a store failure shows in the run's own writes
            uploads = await self.store.list_uploads(run_id)
        recorder.emit(RunStart.of(workflow=run.workflow, payload=run.payload, run_id=run_id,
                                  image=run.image, source=run.source, attempt=run.attempt,
                                  uploads=uploads, requested_by=run.requested_by))
        scope = _SandboxScope(self, run, recorder, meter, uploads)
        t0 = time.monotonic()
        result: Any = None
        error: ErrorInfo | None = None
        reason: str | None = None
        reraise: BaseException | None = None
        try:
            if early_cancel is not None:
                raise early_cancel
            ctx = FlueContext(
                id=run_id, payload=run.payload, env=self.env, req=req,
                log=RunLog(recorder), init=scope.init, attempt=run.attempt, uploads=uploads,
            )
            workflow = self.registry.get(run.workflow)
            deadline = self.deadline_for(workflow)
            retries_for(workflow)  # a bad value fails the run now, not when it is lost
            window = asyncio.timeout(deadline)
            try:
                async with window:
                    result = await _call_workflow(workflow.run, ctx)
            except TimeoutError:
                if not window.expired():
                    raise  # the workflow's own timeout: its failure
                raise DeadlinePassed(f"the run's deadline of {deadline:g} s passed") from None
            status = RunStatus.completed
        except DeadlinePassed as exc:
            status, reason = RunStatus.timed_out, str(exc)
        except asyncio.CancelledError as exc:
            if stop is not None and stop.requeue and self.workers.may_requeue(run):
                status, reason = RunStatus.queued, stop.reason  # see _finish
            elif stop is not None:
                status, reason = stop.status, stop.reason
            else:
                status = RunStatus.cancelled
                reason = str(exc.args[0]) if exc.args else "cancelled while running"
            reraise = asyncio.CancelledError(reason)
        except (Exception, SystemExit) as exc:  # sys.exit() in a workflow is its failure
            status, error = RunStatus.failed, error_info(exc)
        except BaseException as exc:  # KeyboardInterrupt and the like: record, clean, re-raise
            status, error, reraise = RunStatus.failed, error_info(exc), exc
        try:
            final = await run_to_completion(
                self._finish(run, scope, recorder, status, result, error, reason, t0)
            )
        finally:
            self.meters.pop(run_id, None)
        watches.ended(final)
        if reraise is not None:
            raise reraise
        return final

    def deadline_for(self, workflow: Workflow) -> float:
        """Seconds a run of ``workflow`` may take: its module's ``deadline_seconds``, else
        PYFLUE_DEFAULT_DEADLINE; at least 1 s and at most PYFLUE_MAX_DEADLINE."""
        limits = self.settings.server
        wanted = getattr(workflow.module, "deadline_seconds", None)
        if wanted is not None and (not isinstance(wanted, int | float) or isinstance(wanted, bool)
                                   or not math.isfinite(wanted)):
            raise ConfigError(f"workflow {workflow.name!r}: deadline_seconds must be a number of "
                              f"seconds, not {wanted!r}")
        seconds = limits.default_deadline if wanted is None else float(wanted)
        return min(max(seconds, 1.0), limits.max_deadline)


    async def _finish(
        self,
        run: Run,
        scope: _SandboxScope,
        recorder: RunRecorder,
        status: RunStatus,
        result: Any,
        error: ErrorInfo | None,
        reason: str | None,
        t0: float,
    ) -> Run:
        run_id = run.run_id
        try:
            await scope.close()
        except Exception as exc:  # the container could not be removed: the reaper will
            recorder.emit(Log(level="error",
                              message=f"removing the run's container failed: {exc}"))
        duration_ms = int((time.monotonic() - t0) * 1000)
        try:
            await recorder.flush()
        except Exception as exc:  # events lost to a store failure: still end the run's record
            error = error or ErrorInfo(
                type="store_error", message=f"recording the run's events failed: {exc}"
            )
            status = RunStatus.failed if status is RunStatus.completed else status
        # Nothing is recorded after this but the end itself (or the requeue), in one write with
        # the run's record: events a straggling thread still emits are refused.
        with contextlib.suppress(Exception):  # a store failure was met by flush() above
            await recorder.close()
        if status is RunStatus.queued:  # back to the queue: a retry-safe run, its worker stopping
            if await self.workers.requeue(run, reason or "its worker stopped"):
                return await self.store.get_run(run_id)
            # It may not go back: a cancel was asked meanwhile (or another worker took it).
            asked = (await self.store.get_run(run_id)).cancel_requested
            status, reason = ((RunStatus.cancelled, asked) if asked
                              else (RunStatus.interrupted, reason))
        if reason is None and recorder.limit_reasons:
            reason = "; ".join(dict.fromkeys(recorder.limit_reasons))
        # Granted secrets never reach the store, in the result or the error either.
        result = recorder.redactor.data(result)
        if error is not None:
            error = ErrorInfo.model_validate(  # the values redacted, its keys kept
                {k: recorder.redactor.data(v) for k, v in error.model_dump().items()})
        end = RunEnd.of(status, error=error, reason=reason, duration_ms=duration_ms,
                        result=result, run_id=run_id)
        # The record is final when run_end is stored (one write): whoever sees run_end reads the
        # outcome. Only from `running` at this attempt: a worker that took this run as lost (see
        # owner_is_dead) has ended it already, run_end and all, or put it back in the queue for
        # a next attempt that may be running elsewhere by now; either stands.
        container: dict[str, Any] = {"trace_id": run.trace_id} if run.trace_id else {}
        resources = scope.meter.summary()
        if resources is not None:
            container["resources"] = resources
        pending = None
        if scope.box_id is not None:
            pending = self.provider.removal(scope.box_id)
            container |= {"container_id": scope.box_id,
                          "container_removed_at": None if pending else utcnow()}
        try:
            written = time.perf_counter()
            final = await self.store.update_run(run_id, RunUpdate(
                status=status, result=result, has_result=status is RunStatus.completed,
                error=error, reason=reason, finished_at=utcnow(), duration_ms=duration_ms,
                image=scope.image, expect_status=RunStatus.running, expect_attempt=run.attempt,
                events=[recorder.stored(end)], extra=container,
                samples=scope.meter.wire() if resources is not None else None,
            ))
            if recorder.watch is not None:
                recorder.watch.store_write("update_run", time.perf_counter() - written)
            if pending is not None:
                task = asyncio.ensure_future(self._note_removed(run_id, pending))
                self._removals.add(task)
                task.add_done_callback(self._removals.discard)
            return final
        except RunStateConflict:
            log.warning("run %s was taken back by another worker while it ran here (this "
                        "worker was taken for lost); its outcome here is dropped", run_id)
            return await self.store.get_run(run_id)

    async def _note_removed(self, run_id: str, removal: Awaitable[bool]) -> None:
        """Records when a container removed in the background after its run's end is gone."""
        try:
            if await removal:
                await self.store.update_run(run_id, RunUpdate(
                    extra={"container_removed_at": utcnow()}))
        except Exception as exc:  # the run's outcome stands; its record lacks the time only
            log.warning("could not record the container removal of %s: %s", run_id, exc)

    async def settle(self) -> None:
        """Waits for the container removals still to be recorded (before the store closes)."""
        if self._removals:
            await asyncio.wait(list(self._removals), timeout=30)

    async def run(self, workflow: str, payload: Any, **kwargs: Any) -> Run:
        """``submit`` then ``execute``."""
        run = await self.submit(workflow, payload, **kwargs)
        return await self.execute(run.run_id)


async def _read_spool(path: Path) -> AsyncIterator[bytes]:
    """A spool file's chunks, each read off the event loop."""
    chunks = spooled(path)
    sentinel = b""
    try:
        while chunk := await asyncio.to_thread(next, chunks, sentinel):
            yield chunk
    finally:
        chunks.close()


async def _call_workflow(fn: Any, ctx: FlueContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        value = await fn(ctx)
    else:
        # A daemon thread of its own: a cancelled run does not wait for synchronous code
        # (which cannot be interrupted) and the process can still exit.
        value = await in_daemon_thread(fn, ctx)
        if inspect.isawaitable(value):
            value = await value
    try:
        # As the store keeps it (NaN and infinities null), so every surface shows one value.
        jsonable = to_jsonable_python(value, inf_nan_mode="null")
        json.dumps(jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the workflow returned a {type(value).__name__} that is not JSON-serialisable "
            f"({exc}); return dicts, lists, strings, numbers or Pydantic models"
        ) from None
    return jsonable


class _SandboxScope:
    """The run's one container, created on the first ``ctx.init`` and removed at the end."""

    def __init__(self, runner: Runner, run: Run, recorder: RunRecorder,
                 meter: ResourceMeter, uploads: Sequence[UploadInfo] = ()) -> None:
        self._runner = runner
        self.meter = meter
        self._run = run
        self._recorder = recorder
        self._uploads = list(uploads)
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._box: Sandbox | None = None
        self._spec: SandboxSpec | None = None
        self._harnesses: list[Harness] = []

    async def init(self, agent: Agent, ctx: FlueContext) -> Harness:
        if not isinstance(agent, Agent):
            raise ConfigError(
                f"ctx.init expects an agent from create_agent(...), got {type(agent).__name__}"
            )
        config = await agent.configure(ctx)
        spec = self._spec_for(config)
        async with self._lock:
            if self._box is None:
                box = await self._stack.enter_async_context(
                    self._runner.provider.open(spec, self._recorder.emit)
                )
                if self._uploads:  # in place before the workflow sees the container
                    await place_uploads(self._runner.store, self._run.run_id, box,
                                        self._uploads, self._recorder.emit,
                                        limits=self._runner.settings.sandbox.copy_limits,
                                        spool=self._runner.settings.spool_dir)
                self._box, self._spec = box, spec
                self.meter.attach(box)
            elif spec != self._spec:
                raise ConfigError(
                    "a run has one container: this agent asks for different sandbox settings "
                    f"({spec.image}, network {spec.network}) than the first one initialized"
                )
        harness = Harness(self._box, self._recorder, config, self._runner.settings,
                          self._open_session, env=self._runner.env,
                          artifacts=self._runner.artifacts)
        self._harnesses.append(harness)
        if harness.fs.cwd != self._box.workdir:
            await harness.fs.mkdir(harness.fs.cwd)  # an agent's cwd exists when it starts
        return harness

    def _open_session(self, harness: Harness, name: str, tools: Sequence[Any]) -> Session:
        return Session(name=name, harness=harness, models=self._runner.models,
                       settings=self._runner.settings.models, recorder=self._recorder,
                       tools=[as_tool(t) for t in tools])

    def _spec_for(self, config: AgentConfig) -> SandboxSpec:
        spec = spec_for(config, self._runner.settings.sandbox, run_id=self._run.run_id,
                        workflow=self._run.workflow, image_override=self._run.image)
        if not config.egress_secrets:
            return spec
        # Granted like any secret (so redacted everywhere), but the container only ever sees
        # the placeholder: the egress proxy swaps in the value for the named hosts.
        granted = grant(config.egress_secrets, self._runner.env, self._recorder.redactor,
                        'agent config "egress_secrets"')
        held = tuple(EgressSecret(name=name, hosts=tuple(h.lower() for h in hosts),
                                  placeholder=placeholder(self._run.run_id, name),
                                  value=granted[name])
                     for name, hosts in config.egress_secrets.items())
        return dataclasses.replace(spec, egress_secrets=held,
                                   env={**spec.env, **{s.name: s.placeholder for s in held}})

    @property
    def image(self) -> str | None:
        return self._spec.image if self._spec else None

    @property
    def box_id(self) -> str | None:
        """The run's container id, once it has one."""
        return self._box.id if self._box is not None else None

    async def close(self) -> None:
        try:
            await self._collect()
            await self.meter.stop()  # its last sample, while the container is still there
        finally:
            await self._stack.aclose()

    async def _collect(self) -> None:
        """Saves what the agents' ``artifacts`` patterns match, before the container goes:
        whatever the run's outcome, within COLLECT_SECONDS. A failure is a log event."""
        if self._box is None:
            return
        try:
            async with asyncio.timeout(COLLECT_SECONDS):
                done: set[tuple[str, str]] = set()  # an agent initialized twice saves once
                for harness in self._harnesses:
                    todo = [p for p in harness.config.artifacts
                            if (harness.fs.cwd, p) not in done]
                    done.update((harness.fs.cwd, p) for p in todo)
                    if todo:
                        await harness.artifacts.collect(todo)
        except TimeoutError:
            self._recorder.emit(Log(level="error", message="artifacts: collecting the agent's "
                                    f"artifacts took over {COLLECT_SECONDS:g} s; stopped"))
        except Exception as exc:  # the run's outcome is its workflow's; its container still goes
            self._recorder.emit(Log(level="error",
                                    message=f"artifacts: collecting failed: {exc}"))
