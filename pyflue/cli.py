"""The ``pyflue`` command. Commands parse, call the library, render; the work lives elsewhere.

Exit codes: 0 success / run completed; 1 run failed or a check failed; 2 bad input;
130 interrupted (Ctrl-C or SIGTERM).

Only typer and the vocabulary the options name load up front: a command imports what it uses
when it runs, so ``pyflue --help`` and ``pyflue --version`` answer at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from pyflue import __version__
from pyflue.errors import ConfigError, PyflueError, WorkflowError
from pyflue.status import MAX_EVENT_INDEX, RunStatus

if TYPE_CHECKING:
    from pyflue.client import PyFlueClient
    from pyflue.events import Event
    from pyflue.models import Run
    from pyflue.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="pyflue",
    help="Python workflows for agent and CI work; every run gets a fresh Docker container.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: loading rich would double the start-up time
)
images_app = typer.Typer(help="Build and list the sandbox images in images/.", no_args_is_help=True)
app.add_typer(images_app, name="images")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Format(StrEnum):
    pretty = "pretty"
    json = "json"
    ndjson = "ndjson"


class StreamFormat(StrEnum):
    """Formats for events printed one by one as they happen."""

    pretty = "pretty"
    ndjson = "ndjson"


ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-C", help="project folder (default: the current folder)"),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="pretty, json or ndjson")]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", "-s", envvar="PYFLUE_SERVER_URL",
                 help="URL of a pyflue server (`pyflue serve`), e.g. http://127.0.0.1:2024"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="PYFLUE_API_TOKEN", show_default=False,
                 help="the server's API token (sent as Authorization: Bearer)"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pyflue {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Python workflows for agent and CI work; every run gets a fresh Docker container."""


def _settings(project: Path | None) -> Settings:
    from pyflue.settings import Settings

    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError from PYFLUE_* variables
        _die(f"invalid PYFLUE_* setting: {exc}", EXIT_USAGE)
    if project is not None:
        settings = settings.model_copy(update={"project_dir": project.resolve()})
    return settings


def _payload(raw: str | None) -> dict[str, Any]:
    from pyflue.models import parse_payload

    try:
        return parse_payload(raw)
    except PyflueError as exc:
        _die(exc.message, EXIT_USAGE)


def _line(event: Event, fmt: Format | StreamFormat) -> str | None:
    """An event as ``fmt`` shows it: a JSON line, or the pretty one (None: nothing to show)."""
    from pyflue.render import event_json, pretty_event

    return pretty_event(event) if fmt == Format.pretty else event_json(event)


def _die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _exit_code_for(exc: PyflueError) -> int:
    return EXIT_USAGE if isinstance(exc, ConfigError | WorkflowError) else EXIT_FAILED


def _run_async(main: Any) -> Any:
    """Runs a coroutine; SIGTERM cancels it like Ctrl-C; PyflueError becomes one line."""

    async def wrapper() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel, "interrupted by SIGTERM")
        return await main

    try:
        return asyncio.run(wrapper())
    except PyflueError as exc:
        _die(exc.message, _exit_code_for(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="workflow name, e.g. shell_steps")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="payload JSON object ('-' reads stdin)")
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="image for this run's container")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live events")] = False,
    events_format: Annotated[
        StreamFormat, typer.Option("--events", help="live events on stderr: pretty or ndjson")
    ] = StreamFormat.pretty,
    project: ProjectOpt = None,
) -> None:
    """Run one workflow on this machine: events on stderr, the result JSON on stdout."""
    settings = _settings(project)
    raw = sys.stdin.read() if payload == "-" else payload
    body = _payload(raw)
    from pyflue.wiring import run_here

    final: Run = _run_async(run_here(
        settings, name, body, image=image, on_event=_print_live(quiet, events_format),
        on_start=lambda run: typer.echo(f"run {run.run_id}", err=True)))
    if final.status is RunStatus.completed:
        typer.echo(json.dumps(final.result, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    from pyflue.models import end_error

    error = end_error(final.status, final.error, final.reason)
    if error is not None:
        typer.echo(f"error: run {final.run_id} {final.status.value}: "
                   f"{error.type}: {error.message}", err=True)
    raise typer.Exit(EXIT_INTERRUPTED if final.status is RunStatus.cancelled else EXIT_FAILED)


def _print_live(quiet: bool, fmt: StreamFormat) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        line = _line(event, fmt)
        if not quiet and line is not None:
            typer.echo(line, err=True)

    return show


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="the run id printed by `pyflue run`")],
    fmt: FormatOpt = Format.pretty,
    follow: Annotated[bool, typer.Option("--follow", help="wait for new events until run_end")]
    = False,
    after: Annotated[int, typer.Option("--after", min=0, max=MAX_EVENT_INDEX,
                                       help="only events after this index")]
    = 0,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ws: Annotated[bool, typer.Option("--ws", help="with --server --follow: use the WebSocket "
                                     "instead of SSE")] = False,
) -> None:
    """Show a run's events from the local store, or from a server with --server.

    A run the server does not know but this machine's store does (a `pyflue run` while
    PYFLUE_SERVER_URL is set) is shown from the local store, with a note on stderr."""
    if server:
        _run_async(_remote_or_local_logs(_client(server, token), project, server, run_id, fmt,
                                         follow, after, ws))
        return
    _run_async(_logs(_settings(project), run_id, fmt, follow, after))


async def _remote_or_local_logs(client: PyFlueClient, project: Path | None, server: str,
                                run_id: str, fmt: Format, follow: bool, after: int,
                                ws: bool) -> None:
    from pyflue.client import NotFoundError
    from pyflue.wiring import has_run

    try:
        await _remote_logs(client, run_id, fmt, follow, after, ws)
        return
    except NotFoundError:
        settings = _settings(project)
        if not await has_run(settings, run_id):
            raise  # not here either: the server's answer
    typer.echo(f"note: run {run_id} is not on {server}; shown from this machine's store",
               err=True)
    await _logs(settings, run_id, fmt, follow, after)


async def _logs(settings: Settings, run_id: str, fmt: Format, follow: bool, after: int) -> None:
    from pyflue.wiring import open_store

    async with open_store(settings) as store:
        await store.get_run(run_id)
        if follow:
            async for event in store.subscribe(run_id, after=after):
                _echo_event(event, fmt)
            return
        events = await store.list_events(run_id, after=after)
        if fmt is Format.json:
            typer.echo(_events_document(run_id, events))
        else:
            for event in events:
                _echo_event(event, fmt)


def _echo_event(event: Any, fmt: Format) -> None:
    line = _line(event, fmt)
    if line is not None:
        typer.echo(line)


async def _remote_logs(client: PyFlueClient, run_id: str, fmt: Format, follow: bool,
                       after: int, ws: bool = False) -> None:
    async with client:
        if follow:
            live = client.runs.follow if ws else client.runs.stream
            async for event in live(run_id, after=after):
                _echo_event(event, fmt)
            return
        events = await client.runs.events(run_id, after=after)
        if fmt is Format.json:
            typer.echo(_events_document(run_id, events))
        else:
            for event in events:
                _echo_event(event, fmt)


def _client(server: str | None, token: str | None, command: str = "") -> PyFlueClient:
    """The client for --server / PYFLUE_SERVER_URL; exit 2 when neither names a server."""
    from pyflue.client import PyFlueClient

    if not server:
        hint = {"invoke": "; to run a workflow on this machine use `pyflue run NAME`"}
        _die(f"`pyflue {command}` needs a server: pass --server URL or set PYFLUE_SERVER_URL "
             f"(start one with `pyflue serve`){hint.get(command, '')}", EXIT_USAGE)
    if "://" not in server:
        server = f"http://{server}"
    return PyFlueClient(server, token=token or None)


async def _as_usage_errors(main: Awaitable[T], *, not_found: bool = False) -> T:
    """Refused input (400/413/415, and 404 when the name came from the user) exits 2."""
    from pyflue.client import BadRequestError, NotFoundError

    try:
        return await main
    except BadRequestError as exc:
        raise ConfigError(exc.message) from None
    except NotFoundError as exc:
        if not_found:
            raise ConfigError(exc.message) from None
        raise


@app.command()
def invoke(
    name: Annotated[str, typer.Argument(help="workflow name on the server, e.g. shell_steps")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="payload JSON object ('-' reads stdin)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait and print the result JSON")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="show live events on stderr, then print the result")
    ] = False,
    events_format: Annotated[
        StreamFormat, typer.Option("--events", help="--follow events: pretty or ndjson")
    ] = StreamFormat.pretty,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="the same key returns the same run")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Invoke a workflow on a pyflue server (for CI): prints the run id, or with --wait or
    --follow the result; the exit code mirrors the run (0 completed, 1 failed, 130 cancelled)."""
    if wait and follow:
        _die("pass --wait or --follow, not both", EXIT_USAGE)
    raw = sys.stdin.read() if payload == "-" else payload
    body = _payload(raw)
    client = _client(server, token, "invoke")
    main = _invoke(client, name, body, wait, follow, events_format, idempotency_key)
    outcome: Run | str = _run_async(_as_usage_errors(main, not_found=True))
    if isinstance(outcome, str):  # neither --wait nor --follow: the run id of the run started
        typer.echo(outcome)
        raise typer.Exit(EXIT_OK)
    typer.echo(f"run {outcome.run_id} {outcome.status.value}", err=True)
    if outcome.status is RunStatus.completed:
        typer.echo(json.dumps(outcome.result, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    why = (f"{outcome.error.type}: {outcome.error.message}" if outcome.error
           else outcome.reason or outcome.status.value)
    typer.echo(f"error: run {outcome.run_id} {outcome.status.value}: {why}", err=True)
    raise typer.Exit(EXIT_INTERRUPTED if outcome.status is RunStatus.cancelled else EXIT_FAILED)


async def _invoke(
    client: PyFlueClient, name: str, payload: dict[str, Any], wait: bool, follow: bool,
    fmt: StreamFormat, key: str | None,
) -> Run | str:
    seen: set[str] = set()

    def show(event: Event) -> None:
        if event.run_id not in seen:
            seen.add(event.run_id)
            typer.echo(f"run {event.run_id}", err=True)
        if (line := _line(event, fmt)) is not None:
            typer.echo(line, err=True)

    async with client:
        if not (wait or follow):
            started = await client.workflows.invoke(name, payload, wait=False,
                                                    idempotency_key=key)
            return str(started["run_id"])
        return await client.workflows.run(name, payload, idempotency_key=key,
                                          on_event=show if follow else None)


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="the id of a queued or running run")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a queued or running run on a pyflue server; its container is killed."""
    client = _client(server, token, "cancel")

    async def _cancel() -> dict[str, Any]:
        async with client:
            return await client.runs.cancel(run_id)

    body: dict[str, Any] = _run_async(_as_usage_errors(_cancel()))
    typer.echo(f"{body['status']} {body['run_id']}")


@app.command()
def runs(
    status: Annotated[RunStatus | None, typer.Option(help="only runs with this status")] = None,
    workflow: Annotated[str | None, typer.Option(help="only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
    fmt: FormatOpt = Format.pretty,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List recent runs, newest first: this machine's, or a server's with --server."""
    found: list[Run]
    if server:
        found = _run_async(_remote_runs(_client(server, token), status, workflow, limit))
    else:
        found = _run_async(_runs(_settings(project), status, workflow, limit))
    if fmt is Format.json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in found], indent=2))
    elif fmt is Format.ndjson:
        for r in found:
            typer.echo(r.model_dump_json())
    elif not found:
        typer.echo("no runs yet: start one with `pyflue run NAME --payload '{...}'`")
    else:
        for r in found:
            typer.echo(_run_line(r))


async def _runs(settings: Settings, status: RunStatus | None, workflow: str | None,
                limit: int) -> list[Run]:
    from pyflue.wiring import open_store

    async with open_store(settings) as store:
        return await store.list_runs(status=status, workflow=workflow, limit=limit)


async def _remote_runs(client: PyFlueClient, status: RunStatus | None, workflow: str | None,
                       limit: int) -> list[Run]:
    async with client:
        return await client.runs.recent(limit, status=status, workflow=workflow)


@app.command()
def workflows(
    fmt: FormatOpt = Format.pretty,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List the workflows discovered in workflows/ and src/workflows/, or a server's."""
    from pyflue.workflows import WorkflowRegistry

    if server:
        rows = _run_async(_remote_workflows(_client(server, token)))
        _print_workflows(rows, fmt, f"no workflows on {server}")
        return
    settings = _settings(project)
    try:
        found = WorkflowRegistry(settings.project_dir).summaries()
    except PyflueError as exc:
        _die(exc.message, EXIT_USAGE)
    rows = [{"name": w.name, "path": str(w.path), "description": _described(w.description, w.error),
             "error": w.error} for w in found]
    _print_workflows(rows, fmt, f"no workflows under {settings.project_dir}: add "
                                "workflows/<name>.py exporting run(ctx)")


async def _remote_workflows(client: PyFlueClient) -> list[dict[str, Any]]:
    async with client:
        found = await client.workflows.list()
    return [{"name": w.name, "description": _described(w.description, w.error),
             "error": w.error} for w in found]


def _described(description: str, error: str | None) -> str:
    return description if error is None else f"(cannot load: {error})"


def _print_workflows(rows: list[dict[str, Any]], fmt: Format, empty: str) -> None:
    if fmt is not Format.pretty:
        typer.echo(json.dumps(rows, indent=2) if fmt is Format.json
                   else "\n".join(json.dumps(r) for r in rows))
    elif not rows:
        typer.echo(empty)
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            typer.echo(f"{r['name']:<{width}}  {r['description']}")


@app.command()
def doctor(project: ProjectOpt = None) -> None:
    """Check the Docker engine, runtimes, sandbox image and run store, with fixes."""
    from pyflue.doctor import run_checks

    settings = _settings(project)
    checks = _run_async(run_checks(settings))
    failed = False
    for check in checks:
        mark = "ok  " if check.ok else ("warn" if check.optional else "FAIL")
        typer.echo(f"{mark}  {check.name:<14} {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"      {'':<14} fix: {check.fix}")
        failed = failed or (not check.ok and not check.optional)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 2024)")] = None,
    store_url: Annotated[str | None, typer.Option(help="SQLAlchemy async URL of the store")]
    = None,
    max_concurrency: Annotated[int | None, typer.Option(min=1, help="runs at once")] = None,
    insecure_bind: Annotated[
        bool, typer.Option("--insecure-bind", help="allow a non-loopback address without a token")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Start the control plane (HTTP API, scheduler) on 127.0.0.1:2024."""
    import uvicorn

    from pyflue.api.app import create_app

    settings = _settings(project)
    changes: dict[str, Any] = {k: v for k, v in {
        "host": host, "port": port, "max_concurrency": max_concurrency,
    }.items() if v is not None}
    if insecure_bind:
        changes["allow_insecure_bind"] = True
    server = settings.server.model_copy(update=changes)
    settings = settings.model_copy(update={"server": server, **(
        {"store_url": store_url} if store_url else {})})
    problem = bind_problem(server.host, server.api_token is not None, server.allow_insecure_bind)
    if problem:
        _die(problem, EXIT_USAGE)
    # Attached clients (SSE, ?wait=result) must not hold a shutdown until their runs end.
    uvicorn.run(create_app(settings), host=server.host, port=server.port, log_level="info",
                timeout_graceful_shutdown=5)


def bind_problem(host: str, has_token: bool, forced: bool) -> str | None:
    """Why serving on ``host`` is refused, or None."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or has_token or forced:
        return None
    return (f"refusing to serve on {host} without an API token: set PYFLUE_API_TOKEN (clients "
            "send `Authorization: Bearer <token>`), or pass --insecure-bind to serve anyway")


@app.command()
def reap(project: ProjectOpt = None) -> None:
    """Remove containers and volumes left by runs that are no longer running."""
    from pyflue.wiring import open_runner

    settings = _settings(project)

    async def _reap() -> list[str]:
        async with open_runner(settings) as runner:
            return await runner.workers.reap()

    reaped: list[str] = _run_async(_reap())
    typer.echo(f"reaped {len(reaped)} sandbox(es)" + "".join(f"\n  {r}" for r in reaped))


@images_app.command("build")
def images_build(
    only: Annotated[list[str] | None, typer.Argument(help="image names (default: all)")] = None,
    base: Annotated[
        str | None, typer.Option(help="base image (default: debian:bookworm-slim or bootstrap)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rebuild every layer")] = False,
    project: ProjectOpt = None,
) -> None:
    """Build the images in images/ (bootstrapping a Debian base when no registry answers)."""
    from pyflue.sandbox.docker.images import build_all

    settings = _settings(project)
    try:
        tags = build_all(settings.project_dir, docker_host=settings.docker_host,
                         progress=lambda line: typer.echo(line, err=True),
                         base=base, no_cache=no_cache, only=only)
    except PyflueError as exc:
        _die(exc.message, _exit_code_for(exc))
    typer.echo("\n".join(tags))


@images_app.command("list")
def images_list(project: ProjectOpt = None) -> None:
    """List the images pyflue builds and whether each exists."""
    from pyflue.sandbox.docker.images import ImageBuilder, discover

    settings = _settings(project)
    try:
        builder = ImageBuilder(settings.docker_host, lambda _line: None)
        for image in discover(settings.project_dir):
            state = "present" if builder.exists(image.tag) else "missing"
            typer.echo(f"{image.tag:<32} {state:<8} {image.context}")
    except PyflueError as exc:
        _die(exc.message, _exit_code_for(exc))


def _events_document(run_id: str, events: list[Event]) -> str:
    from pyflue.render import events_document

    return events_document(run_id, events)


def _run_line(run: Run) -> str:
    from pyflue.render import run_line

    return run_line(run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

