"""``FlueContext``: what a workflow's ``run(ctx)`` receives (``ctx.log`` is
:class:`pyflue.recorder.RunLog`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyflue.compat import CONTEXT, missing, upstream_options
from pyflue.errors import NotSupported

if TYPE_CHECKING:  # a workflow file imports this module: it loads nothing heavy
    from pyflue.agents import Agent
    from pyflue.harness import Harness
    from pyflue.models import UploadInfo
    from pyflue.recorder import RunLog


class FlueContext:
    """The invocation: ``id`` (the run id), ``payload``, ``env``, ``req``, ``log``, ``init``;
    ``attempt`` is 1, or which attempt of a requeued run this is (``retry_interrupted``);
    ``uploads`` the archives sent with it (``--upload``, multipart parts), each an
    :class:`~pyflue.models.UploadInfo` (``dest``, ``files``, ``bytes``, ``path()``...), whose
    files are in the workspace once ``ctx.init(agent)`` has returned."""

    def __init__(
        self,
        *,
        id: str,
        payload: dict[str, Any],
        env: Mapping[str, str],
        req: Any,
        log: RunLog,
        init: Callable[[Agent, FlueContext], Awaitable[Harness]],
        attempt: int = 1,
        uploads: Sequence[UploadInfo] = (),
    ) -> None:
        self.id = id
        self.attempt = attempt
        self.uploads: list[UploadInfo] = list(uploads)
        self.payload = payload
        self.env = dict(env)
        self.req = req
        self.log = log
        self._init = init

    @upstream_options("ctx.init", otherwise="configure the agent in create_agent(lambda ctx: "
                      "{...}) and pass it: `await ctx.init(agent)`")
    async def init(self, agent: Agent | None = None) -> Harness:
        """Initializes ``agent`` for this run and returns its harness over the run's container.

        The run's container is created on the first call; later calls share it.
        """
        if agent is None:  # PyFlue 0.2's legacy keyword form, ctx.init(model=...)
            raise NotSupported("ctx.init() without an agent is PyFlue 0.2's legacy form: "
                               "`agent = create_agent(lambda ctx: "
                               "{...})` at module level, then `await ctx.init(agent)`")
        return await self._init(agent, self)

    # PyFlue 0.2's spellings of the same things.
    @property
    def run_id(self) -> str:
        """The run id (= ``ctx.id``)."""
        return self.id

    @property
    def request(self) -> Any:
        """The HTTP request (= ``ctx.req``), or None."""
        return self.req

    @property
    def workflow_name(self) -> str:
        """The workflow's name, read from the run id ``workflow:<name>:<ulid>``."""
        return self.id.split(":", 1)[-1].rsplit(":", 1)[0]

    if not TYPE_CHECKING:  # for mypy, a missing attribute stays a type error

        def __getattr__(self, name: str) -> Any:
            raise missing("ctx", name, {} if name.startswith("_") else CONTEXT)

    def __repr__(self) -> str:
        return f"FlueContext(id={self.id!r})"
