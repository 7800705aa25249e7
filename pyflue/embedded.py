"""Running workflows from Python, in this process: the in-process API (docs/python-api.md).

``await run_workflow("hello", {"name": "Ada"})`` runs one workflow as ``pyflue run`` does (a
fresh container, the run recorded in the project's store) and returns its final
:class:`~pyflue.models.Run`; :func:`run_workflow_sync` is the same without an event loop;
:class:`WorkflowRunner` keeps the store and the engine client open for several runs. A run that
fails is a returned record with ``status`` ``failed`` and its ``error``, not an exception;
what stops a run from starting raises :mod:`pyflue.errors` (WorkflowNotFound, InvalidPayload,
InvalidSettings, StoreError, EngineUnavailable, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

    from pyflue.events import Event
    from pyflue.models import Run
    from pyflue.runs import Runner
    from pyflue.settings import Settings


def _settings(project: str | Path | None, settings: Settings | None) -> Settings:
    from pyflue.settings import load_settings

    chosen = settings if settings is not None else load_settings()  # InvalidSettings
    if project is not None:
        chosen = chosen.model_copy(update={"project_dir": Path(project).resolve()})
    return chosen


class WorkflowRunner:
    """Runs workflows of one project, one after another or at once, over one store and one
    Docker client: ``async with WorkflowRunner(project="path") as runner: await runner.run(...)``.

    ``project`` is the project folder (default: found upward from the current folder, as the
    CLI does); ``settings``: a :class:`~pyflue.settings.Settings` to use instead of the
    ``PYFLUE_*`` environment."""

    def __init__(self, *, project: str | Path | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = _settings(project, settings)
        self._stack: contextlib.AsyncExitStack | None = None
        self._runner: Runner | None = None

    async def __aenter__(self) -> WorkflowRunner:
        from pyflue.wiring import open_runner

        async with contextlib.AsyncExitStack() as stack:
            self._runner = await stack.enter_async_context(open_runner(self.settings))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack, self._runner = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def run(self, workflow: str, payload: dict[str, Any] | None = None, *,
                  image: str | None = None,
                  on_event: Callable[[Event], None] | None = None) -> Run:
        """Runs ``workflow`` with ``payload`` (a JSON object) and returns its final record;
        ``image`` overrides the container image, ``on_event`` gets each event as it is stored.
        Cancelling the awaiting task cancels the run (its container removed)."""
        from pyflue.wiring import run_here

        if self._runner is None:
            raise RuntimeError("use WorkflowRunner as `async with WorkflowRunner(...) as runner`")
        return await run_here(self.settings, workflow, payload or {}, image=image,
                              on_event=on_event or (lambda _event: None), runner=self._runner)


async def run_workflow(workflow: str, payload: dict[str, Any] | None = None, *,
                       image: str | None = None, project: str | Path | None = None,
                       settings: Settings | None = None,
                       on_event: Callable[[Event], None] | None = None) -> Run:
    """Runs one workflow in this process and returns its final :class:`~pyflue.models.Run`
    (see :class:`WorkflowRunner` for the arguments)."""
    async with WorkflowRunner(project=project, settings=settings) as runner:
        return await runner.run(workflow, payload, image=image, on_event=on_event)


def run_workflow_sync(workflow: str, payload: dict[str, Any] | None = None, *,
                      image: str | None = None, project: str | Path | None = None,
                      settings: Settings | None = None,
                      on_event: Callable[[Event], None] | None = None) -> Run:
    """:func:`run_workflow` for code without an event loop (not from inside one)."""
    return asyncio.run(run_workflow(workflow, payload, image=image, project=project,
                                    settings=settings, on_event=on_event))
