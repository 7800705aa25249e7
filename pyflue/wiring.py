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
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pyflue.errors import PyflueError
from pyflue.settings import Settings

if TYPE_CHECKING:
    from pyflue.events import Event
    from pyflue.llm import ModelResolver
    from pyflue.models import Run
    from pyflue.runs import Runner
    from pyflue.sandbox.base import SandboxProvider, SandboxSpec
    from pyflue.sandbox.docker import DockerProvider
    from pyflue.store import RunStore


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

    return DockerProvider(
        settings.docker_host, scope=store_scope(settings), kill_grace=settings.sandbox.kill_grace
    )


class _NoAsks:
    """An agent that asks nothing of its sandbox: what a pooled container is made for."""

    image = network = memory = cpus = pids = runtime = None


def pool_templates(settings: Settings) -> list[tuple[SandboxSpec, int]]:
    """The warm pool's template specs and sizes (PYFLUE_POOL_SIZE, PYFLUE_POOL_IMAGES): the
    spec a run gets for each image when its agent asks for nothing else."""
    from pyflue.sandbox.policy import spec_for

    sizes = settings.pool.sizes(settings.sandbox.image)
    return [(spec_for(_NoAsks(), settings.sandbox, run_id="pool", workflow="",
                      image_override=image), size) for image, size in sizes.items()]


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings,
    *,
    store: RunStore | None = None,
    provider: SandboxProvider | None = None,
    models: ModelResolver | None = None,
    pool: bool = False,
) -> AsyncIterator[Runner]:
    """A Runner over the settings' store, the Docker engine and the model clients (or those
    given); on exit, closes what it built here. ``pool``: the Docker provider built here keeps
    a warm pool (the server's; a one-shot ``pyflue run`` gains nothing from one)."""
    from pyflue.runs import Runner
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
        runner = Runner(settings=settings, store=store, provider=provider,
                        registry=WorkflowRegistry(settings.project_dir), env=os.environ,
                        models=models)
        if models is None:
            stack.push_async_callback(runner.models.close)
        stack.push_async_callback(runner.settle)  # first: removals recorded while all is open
        yield runner


async def run_here(
    settings: Settings, workflow: str, payload: dict[str, Any], *, image: str | None = None,
    on_start: Callable[[Run], None] = lambda _run: None,
    on_event: Callable[[Event], None] = lambda _event: None,
) -> Run:
    """Runs one workflow in this process (``pyflue run``) and returns its final record.

    ``on_start`` gets the recorded run before it starts, ``on_event`` each event as it is
    stored (``run_end`` included). A reaper pass runs alongside, for containers a crashed
    earlier run left behind. Cancelling ends the run ``cancelled``, its container removed.
    """
    async with open_runner(settings) as runner:
        submitted = await runner.submit(workflow, payload, image=image)
        on_start(submitted)

        async def follow() -> None:
            async for event in runner.store.subscribe(submitted.run_id):
                on_event(event)

        async def reap() -> None:
            with contextlib.suppress(PyflueError):  # the run itself reports a dead engine
                await runner.workers.reap()

        helpers = {asyncio.create_task(follow()), asyncio.create_task(reap())}
        try:
            return await runner.execute(submitted.run_id)
        finally:
            # Let the follower show run_end and the reaper finish, briefly; then stop both
            # before the store and the engine client close under them.
            await asyncio.wait(helpers, timeout=5)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)


async def rerun_here(
    settings: Settings, run_id: str, *,
    on_start: Callable[[Run], None] = lambda _run: None,
    on_event: Callable[[Event], None] = lambda _event: None,
) -> Run:
    """Runs ``run_id``'s workflow again in this process, with the same payload and the image
    its container used (``pyflue rerun``); returns the new run's final record. RunNotFound
    when this machine's store does not know ``run_id``."""
    async with open_store(settings) as store:
        original = await store.get_run(run_id)
    return await run_here(settings, original.workflow, original.payload, image=original.image,
                          on_start=on_start, on_event=on_event)
