"""The composition root: settings in, a worker's parts out, built and closed in one place.

The CLI (``pyflue run``, ``reap``, ``logs``, ``doctor``) and the server (:func:`pyflue.api.app.
create_app`) both build their run store, Docker sandbox provider, model clients and
:class:`~pyflue.runs.Runner` here; whatever a caller passes in (a test's fakes) is used as it is
and left for the caller to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyflue.errors import ConfigError, PyflueError
from pyflue.settings import Settings

if TYPE_CHECKING:
    from pyflue.engine_watch import EngineWatch
    from pyflue.events import Event
    from pyflue.llm import ModelResolver
    from pyflue.models import Run
    from pyflue.observe import RunObserver
    from pyflue.retention import ForgetHook
    from pyflue.runs import Runner
    from pyflue.sandbox.base import SandboxProvider, SandboxSpec
    from pyflue.sandbox.docker import DockerProvider
    from pyflue.store import RunStore
    from pyflue.uploads import StagedUpload


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[RunStore]:
    """The settings' run store, opened (schema migrated), closed on exit."""
    from pyflue.store import open_store_from_url

    store = open_store_from_url(settings.resolved_store_url())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def has_store(settings: Settings) -> bool:
    """Whether the settings name a store that may hold runs: a URL, or the default SQLite
    file already made. Looking must not create one."""
    return bool(settings.store_url) or settings.default_store_file.exists()


def require_store(settings: Settings) -> None:
    """Raises :class:`~pyflue.errors.RunIdUnknown` when this project has no run store yet, so
    that a command that only looks (``logs``, ``show``) says so instead of making one."""
    from pyflue.errors import RunIdUnknown

    if not has_store(settings):
        raise RunIdUnknown(f"no runs under {settings.project_dir} (no .pyflue/ there): run "
                           "pyflue inside a project, pass -C DIR, or start a run with "
                           "`pyflue run NAME`")


async def has_run(settings: Settings, run_id: str) -> bool:
    """Whether this machine's store (if it has one) knows the run (by id or prefix, see
    :mod:`pyflue.describe`); an ambiguous prefix counts as known (the caller says which)."""
    from pyflue.describe import StoreRuns, resolve
    from pyflue.errors import RunIdAmbiguous

    if not has_store(settings):
        return False
    try:
        async with open_store(settings) as store:
            await resolve(StoreRuns(store), run_id)
    except RunIdAmbiguous:
        return True
    except PyflueError:
        return False
    return True


def store_scope(settings: Settings) -> str:
    """A short, stable id of the run store, labelled on every container it owns.

    It is made from the store's URL without its password: rotating the password must not
    orphan the containers of the runs in flight (a reaper would no longer see them as its own).
    """
    from sqlalchemy.engine import make_url

    url = settings.resolved_store_url()
    if url != "memory://":
        parsed = make_url(url)
        if parsed.password is not None:
            url = parsed._replace(password=None).render_as_string(hide_password=False)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def docker_provider(settings: Settings) -> DockerProvider:
    from pyflue.sandbox.docker import DockerProvider
    from pyflue.sandbox.docker.egress import EgressConfig

    sandbox = settings.sandbox
    egress = EgressConfig(relay_image=sandbox.egress_relay_image,
                          allow_networks=tuple(sandbox.egress_allow_networks),
                          hosts_file=sandbox.egress_hosts_file,
                          ca_file=sandbox.egress_ca_file)
    return DockerProvider(settings.docker_host, scope=store_scope(settings),
                          kill_grace=sandbox.kill_grace, egress=egress)


def engine_address(settings: Settings) -> str:
    """Where the Docker engine is, for messages: PYFLUE_DOCKER_HOST, DOCKER_HOST, or the
    local socket."""
    return (settings.docker_host or os.environ.get("DOCKER_HOST")
            or "unix:///var/run/docker.sock")


def engine_watch(settings: Settings, provider: SandboxProvider) -> EngineWatch | None:
    """A watch over the provider's engine (its ``ping``); None for a provider that has none
    (a test's fake, which never goes away). Started and stopped by the caller.

    A provider that keeps state on the engine (a warm pool of containers, which a daemon
    restart kills) has ``async def on_engine(state: EngineState)``: it is subscribed here and
    told of every change, down (stop refilling, forget what is pooled) and up (rebuild)."""
    from pyflue.engine_watch import EngineWatch

    ping = getattr(provider, "ping", None)
    if ping is None:
        return None
    watch = EngineWatch(ping, engine=engine_address(settings))
    on_engine = getattr(provider, "on_engine", None)
    if on_engine is not None:
        watch.subscribe(on_engine)
    return watch


class _NoAsks:
    """An agent that asks nothing of its sandbox: what a pooled container is made for."""

    image = network = memory = cpus = pids = runtime = None
    egress: tuple[str, ...] = ()
    egress_secrets: dict[str, list[str]] = {}


class _EgressAsks(_NoAsks):
    """An agent that asks for egress only (which names does not matter to a pooled
    container: they are the proxy's, given at the claim)."""

    def __init__(self, names: list[str]) -> None:
        self.egress = tuple(names)


def pool_templates(settings: Settings) -> list[tuple[SandboxSpec, int]]:
    """The warm pool's template specs and sizes (PYFLUE_POOL_SIZE, PYFLUE_POOL_IMAGES): the
    spec a run gets for each image when its agent asks for nothing else; and, when the server
    allows egress, PYFLUE_POOL_EGRESS_SIZE for runs of the default image asking for egress."""
    from pyflue.sandbox.policy import spec_for

    sizes = settings.pool.sizes(settings.sandbox.image)
    templates = [(spec_for(_NoAsks(), settings.sandbox, run_id="pool", workflow="",
                           image_override=image), size) for image, size in sizes.items()]
    if settings.pool.egress_size > 0 and settings.sandbox.max_egress:
        try:
            egress = spec_for(_EgressAsks(settings.sandbox.max_egress), settings.sandbox,
                              run_id="pool", workflow="", image_override=None)
        except ConfigError:  # egress is refused with these defaults (e.g. under runsc)
            return templates
        templates.append((egress, settings.pool.egress_size))
    return templates


def forget_hooks(settings: Settings, store: RunStore) -> list[ForgetHook]:
    """What deletes the parts of a run kept outside the run store, told before its record
    goes (:func:`pyflue.retention.forget_run`): its artifacts' files. ``pyflue runs prune``
    uses it; a :class:`~pyflue.runs.Runner` (the server) hooks its own artifact store."""
    from pyflue.artifacts import artifact_store

    return [artifact_store(settings, store).delete_run]


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings,
    *,
    store: RunStore | None = None,
    provider: SandboxProvider | None = None,
    models: ModelResolver | None = None,
    pool: bool = False,
    observers: Sequence[RunObserver] = (),
) -> AsyncIterator[Runner]:
    """A Runner over the settings' store, the Docker engine and the model clients (or those
    given); on exit, closes what it built here. ``pool``: the Docker provider built here keeps
    a warm pool (the server's; a one-shot ``pyflue run`` gains nothing from one).
    ``observers`` are told of every run (metrics); a tracer joins them when the standard
    OTEL_* variables ask for traces (:mod:`pyflue.tracing`)."""
    from pyflue.runs import Runner
    from pyflue.tracing import open_tracer
    from pyflue.workers import local_owner
    from pyflue.workflows import WorkflowRegistry

    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(settings))
        if provider is None:
            docker = docker_provider(settings)
            stack.push_async_callback(docker.close)  # drains the pool, if any
            templates = pool_templates(settings) if pool else []
            if templates:
                docker.enable_pool(templates, owner=local_owner(),
                                   refill_concurrency=settings.pool.refill_concurrency)
                docker.start_pool()
            provider = docker
        tracer = open_tracer(os.environ)
        if tracer is not None:  # exports what is left once the runs are over
            stack.push_async_callback(asyncio.to_thread, tracer.close)
        runner = Runner(settings=settings, store=store, provider=provider,
                        registry=WorkflowRegistry(settings.project_dir), env=os.environ,
                        models=models,
                        observers=[*observers, *([tracer] if tracer is not None else [])])
        if models is None:
            stack.push_async_callback(runner.models.close)
        stack.push_async_callback(runner.settle)  # first: removals recorded while all is open
        yield runner


# How often a `pyflue run` looks in the store for a cancel asked from elsewhere (`pyflue
# cancel` in another terminal, or a server sharing the store).
CANCEL_POLL_SECONDS = 0.5


async def run_here(
    settings: Settings, workflow: str, payload: dict[str, Any], *, image: str | None = None,
    on_start: Callable[[Run], None] = lambda _run: None,
    on_event: Callable[[Event], None] = lambda _event: None,
    runner: Runner | None = None,
    uploads: Sequence[StagedUpload] = (),
    uploads_from: str | None = None,
) -> Run:
    """Runs one workflow in this process (``pyflue run``) and returns its final record.

    ``on_start`` gets the recorded run before it starts, ``on_event`` each event as it is
    stored (``run_end`` included). A reaper pass runs alongside, for containers a crashed
    earlier run left behind. Cancelling ends the run ``cancelled``, its container removed; so
    does a cancel asked through the store (``pyflue cancel``), which ends in the record
    returned. ``runner``: an open one to use (else one is opened and closed here).
    ``uploads`` (checked archives, :func:`pyflue.uploads.pack_folder`) and ``uploads_from``
    (a run whose uploads to send again) go into the run's workspace, as over HTTP.
    """
    sent = Sent(uploads, uploads_from)
    if runner is None:
        async with open_runner(settings) as opened:
            return await _run_with(opened, workflow, payload, image, on_start, on_event, sent)
    return await _run_with(runner, workflow, payload, image, on_start, on_event, sent)


@dataclass(frozen=True)
class Sent:
    """The files sent with a run here: archives staged on disk, and a run to copy from."""

    uploads: Sequence[StagedUpload] = ()
    uploads_from: str | None = None


async def _run_with(
    runner: Runner, workflow: str, payload: dict[str, Any], image: str | None,
    on_start: Callable[[Run], None], on_event: Callable[[Event], None], sent: Sent = Sent(),
) -> Run:
    from pyflue.errors import RunStateConflict
    from pyflue.workers import local_owner

    store = runner.store
    worker = local_owner()
    submitted = await runner.submit(workflow, payload, image=image, uploads=sent.uploads,
                                    uploads_from=sent.uploads_from)
    # A heartbeat tells whoever cancels through the store that this process acts on it.
    await store.heartbeat(worker)
    on_start(submitted)
    execution = asyncio.create_task(runner.execute(submitted.run_id))
    asked: list[str] = []

    async def follow() -> None:
        async for event in store.subscribe(submitted.run_id):
            on_event(event)

    async def reap() -> None:
        with contextlib.suppress(PyflueError):  # the run itself reports a dead engine
            await runner.workers.reap()

    async def watch() -> None:
        lease = runner.workers.lease
        beat = asyncio.get_running_loop().time()
        while not execution.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            with contextlib.suppress(PyflueError):  # a store hiccup: look again next time
                if asyncio.get_running_loop().time() - beat > lease / 3:
                    beat = asyncio.get_running_loop().time()
                    await store.heartbeat(worker)
                reason = (await store.get_run(submitted.run_id)).cancel_requested
                if reason and not execution.done():
                    asked.append(reason)
                    execution.cancel(reason)  # as Ctrl-C: command and container killed
                    return

    helpers = {asyncio.create_task(follow()), asyncio.create_task(reap()),
               asyncio.create_task(watch())}
    try:
        return await execution
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not asked or (current is not None and current.cancelling()):
            raise  # Ctrl-C or SIGTERM here: the caller's cancel
        return await store.get_run(submitted.run_id)  # cancelled through the store
    except RunStateConflict:
        ended = await store.get_run(submitted.run_id)  # cancelled before it started
        if ended.status.finished:
            return ended
        raise
    finally:
        # Let the follower show run_end and the reaper finish, briefly; then stop both
        # before the store and the engine client close under them.
        execution.cancel()
        await asyncio.wait(helpers, timeout=5)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await store.remove_worker(worker)


async def rerun_here(
    settings: Settings, run_id: str, *,
    on_start: Callable[[Run], None] = lambda _run: None,
    on_event: Callable[[Event], None] = lambda _event: None,
) -> Run:
    """Runs ``run_id``'s workflow again in this process, with the same payload, the same
    uploads and the image its container used (``pyflue rerun``); returns the new run's final
    record. RunNotFound
    when this machine's store does not know ``run_id``, whole or as a unique prefix (of the id
    or of its ULID part, as shell completion offers them)."""
    from pyflue.describe import StoreRuns, resolve
    from pyflue.errors import RunIdUnknown, RunNotFound

    async with open_store(settings) as store:
        try:
            original = await store.get_run(run_id)
        except RunNotFound as not_found:
            try:
                original = await resolve(StoreRuns(store), run_id)
            except RunIdUnknown:
                raise not_found from None
    return await run_here(settings, original.workflow, original.payload, image=original.image,
                          on_start=on_start, on_event=on_event, uploads_from=original.run_id)


async def cancel_here(settings: Settings, run_id: str, *, reason: str = "cancelled by request",
                      wait: float = 30.0) -> Run:
    """Cancels a queued or running run of this machine's store (``pyflue cancel`` without a
    server): a queued one at once; a running one is asked through the store, and the process
    running it (a ``pyflue run``, or a server sharing the store) stops it. Waits up to
    ``wait`` seconds for its end and returns its record (still ``running`` if it has not
    ended by then). ``run_id`` may be a prefix (:mod:`pyflue.describe`)."""
    from pyflue.describe import StoreRuns, resolve
    from pyflue.workers import Workers
    from pyflue.workflows import WorkflowRegistry

    require_store(settings)
    async with open_store(settings) as store:
        run = await resolve(StoreRuns(store), run_id)
        provider = docker_provider(settings)  # not used to cancel: Workers' reaper has it
        try:
            workers = Workers(store=store, registry=WorkflowRegistry(settings.project_dir),
                              provider=provider, lease=settings.server.worker_lease)
            run = await workers.cancel(run, reason)
        finally:
            await provider.close()
        deadline = asyncio.get_running_loop().time() + wait
        while not run.status.finished and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            run = await store.get_run(run.run_id)
        return run
