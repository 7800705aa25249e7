"""Who is calling, on every route by construction, and the runs they may see.

**Every route needs a token.** :func:`create_app` gives the app :func:`authenticate` as its
own dependency, and FastAPI adds an app's dependencies to every HTTP and WebSocket route
registered on it, whichever router the route comes from (``app.include_router``) and whenever
it is added. So a new route is guarded without doing anything. Only three ways out, each
explicit and each checked by ``tests/unit/test_auth.py`` (which enumerates ``app.routes``):

- ``@auth.public`` on the endpoint function (``/health``, the OpenAPI document and page);
- ``@auth.public_when(lambda settings: ...)``: public while a setting says so (``/metrics``
  when its setting makes it public);
- :func:`public_mount` for a mounted ASGI app (static assets such as ``/ui``): mounts are
  outside FastAPI's dependencies, so they are only ever mounted through it.

**A route that needs the caller** (to scope runs to its tenant) takes ``caller: CallerDep``:
the same dependency, computed once per request. **A route that names a run** loads it with
:func:`load_run`: another tenant's run is :class:`~pyflue.errors.RunNotFound` (404), exactly as
a run that does not exist, so run ids do not leak across tenants. Lists filter with
:func:`tenant_filter`.

Where a token may be: ``Authorization: Bearer <token>`` (HTTP and WebSocket); for WebSocket
clients that cannot set headers (browsers), the subprotocol ``pyflue.token.<token>`` (offer
``pyflue`` too: the server selects it, so the token is not echoed back), or ``?token=`` (kept
for old clients; ``pyflue serve`` scrubs it from the access log, see
:mod:`pyflue.api.serving`). Tokens are compared as SHA-256 digests in constant time
(:class:`pyflue.tenants.Tokens`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from pyflue.api.errors import HttpProblem, error_reply
from pyflue.models import Run
from pyflue.settings import Settings
from pyflue.store.base import RunStore, missing_run
from pyflue.tenants import OPEN, Caller, Tokens

F = TypeVar("F", bound=Callable[..., Any])

CLOSE_UNAUTHORIZED = 4401
SUBPROTOCOL = "pyflue"
TOKEN_SUBPROTOCOL = "pyflue.token."
_PUBLIC = "__pyflue_public__"

# Declared as a dependency so the OpenAPI document has the `bearer` scheme and every guarded
# operation lists it; the check itself is authenticate's (a 401 in our error body).
bearer = HTTPBearer(
    scheme_name="bearer", auto_error=False,
    description="A token the server accepts (PYFLUE_API_TOKEN, or one of PYFLUE_TOKENS_FILE), "
                "as `Authorization: Bearer <token>`.",
)

# What a public route's caller is: it sees no tenant's runs.
PUBLIC = Caller(name=None, tenant="", admin=False)


class Unauthorized(HttpProblem):
    """A missing or wrong token: 401 over HTTP, close code 4401 over WebSocket."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message,
                         headers={"WWW-Authenticate": "Bearer"})


def public(endpoint: F) -> F:
    """Marks a route's endpoint as needing no token."""
    setattr(endpoint, _PUBLIC, True)
    return endpoint


def public_when(check: Callable[[Settings], bool]) -> Callable[[F], F]:
    """Marks a route's endpoint as needing no token while ``check(settings)`` holds."""
    def mark(endpoint: F) -> F:
        setattr(endpoint, _PUBLIC, check)
        return endpoint
    return mark


def is_public(endpoint: Any, settings: Settings) -> bool:
    """Whether a route's endpoint is public (see :func:`public`, :func:`public_when`)."""
    mark = getattr(endpoint, _PUBLIC, False)
    return bool(mark(settings)) if callable(mark) else mark is True


def public_mount(app: FastAPI, path: str, asgi: ASGIApp, name: str) -> None:
    """Mounts an ASGI app (static files) that needs no token, and records it as public."""
    app.mount(path, asgi, name=name)
    mounts: set[str] = getattr(app.state, "public_mounts", set())
    mounts.add(path.rstrip("/") or "/")  # as the Mount route spells it
    app.state.public_mounts = mounts


def tokens(conn: HTTPConnection) -> Tokens:
    found: Tokens = conn.app.state.tokens
    return found


def _given(conn: HTTPConnection, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is not None and credentials.scheme.lower() == "bearer":
        return credentials.credentials
    if conn.scope["type"] != "websocket":
        return ""
    for offered in conn.scope.get("subprotocols", ()):
        if offered.startswith(TOKEN_SUBPROTOCOL):
            return str(offered[len(TOKEN_SUBPROTOCOL):])
    return conn.query_params.get("token", "")


async def authenticate(
    conn: HTTPConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    """The caller of a request or socket: raises :class:`Unauthorized` for a missing or wrong
    token on any route that is not public. Without any token configured, everyone is
    :data:`pyflue.tenants.OPEN` (an admin of tenant ``default``)."""
    route = conn.scope.get("route")
    settings: Settings = conn.app.state.settings
    if is_public(getattr(route, "endpoint", None), settings):
        return PUBLIC
    known = tokens(conn)
    if not known.configured:
        return OPEN
    given = _given(conn, credentials)
    caller = known.identify(given) if given else None
    if caller is None:
        where = ("send `Authorization: Bearer <token>` or the subprotocol "
                 "`pyflue.token.<token>`" if conn.scope["type"] == "websocket"
                 else "send `Authorization: Bearer <token>`")
        raise Unauthorized(f"missing or wrong API token: {where} (PYFLUE_API_TOKEN or a "
                           "token of PYFLUE_TOKENS_FILE)")
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


async def load_run(store: RunStore, run_id: str, caller: Caller) -> Run:
    """The run, if the caller may see it: RunNotFound (404) for another tenant's run, with the
    same message as for a run that does not exist."""
    run = await store.get_run(run_id)
    if not caller.sees(run.tenant):
        raise missing_run(run_id)
    return run


def tenant_filter(caller: Caller) -> str | None:
    """The tenant a list of runs is limited to: the caller's own, or None for an admin."""
    return None if caller.admin else caller.tenant


def subprotocol(ws: WebSocket) -> str | None:
    """The subprotocol to accept a socket with: ``pyflue`` when offered (so a token offered
    as ``pyflue.token.<token>`` is not sent back), else the token one, else none."""
    offered = list(ws.scope.get("subprotocols", ()))
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None)


def install(app: FastAPI) -> None:
    """The answer to :class:`Unauthorized`: 401 and the error body over HTTP; over a
    WebSocket, the socket is accepted and closed with 4401 and the reason."""

    async def refused(conn: HTTPConnection, exc: Exception) -> Any:
        assert isinstance(exc, Unauthorized)
        if isinstance(conn, WebSocket):
            await conn.accept(subprotocol=subprotocol(conn))
            await conn.close(CLOSE_UNAUTHORIZED, "unauthorized: " + exc.message[:100])
            return None
        assert isinstance(conn, Request)
        return error_reply(exc)

    app.add_exception_handler(Unauthorized, refused)
