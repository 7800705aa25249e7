"""Looking at runs and workflows: ``pyflue logs``, ``runs`` and ``workflows``, here or on a
server (``--server``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pyflue.cli.common import (
    EXIT_USAGE,
    Format,
    FormatOpt,
    ProjectOpt,
    ServerOpt,
    TokenOpt,
    app,
    between,
    client_for,
    die,
    event_line,
    events_document_text,
    run_async,
    run_line_text,
    runs_app,
    settings_for,
)
from pyflue.completion import complete_run_id, complete_workflow
from pyflue.errors import PyflueError
from pyflue.status import MAX_EVENT_INDEX, RunStatus

if TYPE_CHECKING:
    from pyflue.client import PyFlueClient
    from pyflue.describe import RunDetails
    from pyflue.models import Run
    from pyflue.settings import Settings


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", autocompletion=complete_run_id,
                                          help="the run id printed by `pyflue run`, or a "
                                          "unique prefix of it or of its ULID part")],
    fmt: FormatOpt = Format.pretty,
    follow: Annotated[bool, typer.Option("--follow", help="wait for new events until run_end")]
    = False,
    after: Annotated[int, typer.Option("--after", metavar="N", callback=between(0, MAX_EVENT_INDEX),
                                       help="only events after index N")]
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
        run_async(_remote_or_local_logs(client_for(server, token), project, server, run_id, fmt,
                                         follow, after, ws))
        return
    run_async(_logs(settings_for(project), run_id, fmt, follow, after))


async def _remote_or_local_logs(client: PyFlueClient, project: Path | None, server: str,
                                run_id: str, fmt: Format, follow: bool, after: int,
                                ws: bool) -> None:
    from pyflue.client import NotFoundError
    from pyflue.errors import RunIdUnknown
    from pyflue.wiring import has_run

    try:
        await _remote_logs(client, server, run_id, fmt, follow, after, ws)
        return
    except (NotFoundError, RunIdUnknown):
        settings = settings_for(project)
        if not await has_run(settings, run_id):
            raise  # not here either: the server's answer
    typer.echo(f"note: run {run_id} is not on {server}; shown from this machine's store",
               err=True)
    await _logs(settings, run_id, fmt, follow, after)


async def _logs(settings: Settings, run_id: str, fmt: Format, follow: bool, after: int) -> None:
    from pyflue.describe import StoreRuns, resolve
    from pyflue.wiring import open_store, require_store

    require_store(settings)
    async with open_store(settings) as store:
        run_id = (await resolve(StoreRuns(store), run_id)).run_id
        if follow:
            async for event in store.subscribe(run_id, after=after):
                _echo_event(event, fmt)
            return
        events = await store.list_events(run_id, after=after)
        if fmt is Format.json:
            typer.echo(events_document_text(run_id, events))
        else:
            for event in events:
                _echo_event(event, fmt)


def _echo_event(event: Any, fmt: Format) -> None:
    line = event_line(event, fmt)
    if line is not None:
        typer.echo(line)


async def _remote_logs(client: PyFlueClient, server: str, run_id: str, fmt: Format,
                       follow: bool, after: int, ws: bool = False) -> None:
    from pyflue.describe import ServerRuns, resolve

    async with client:
        run_id = (await resolve(ServerRuns(client, server), run_id)).run_id
        if follow:
            live = client.runs.follow if ws else client.runs.stream
            async for event in live(run_id, after=after):
                _echo_event(event, fmt)
            return
        events = await client.runs.events(run_id, after=after)
        if fmt is Format.json:
            typer.echo(events_document_text(run_id, events))
        else:
            for event in events:
                _echo_event(event, fmt)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", autocompletion=complete_run_id,
                                          help="a run id, or a unique prefix of it or of its "
                                          "ULID part")],
    as_json: Annotated[bool, typer.Option("--json", help="print the run record (plus "
                                          "container_id) as JSON")] = False,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one run: status, result or error with its traceback, image, container, times.

    With --server, a prefix is matched among the server's 1000 most recent runs."""

    details: RunDetails
    if server:
        details = run_async(_remote_details(client_for(server, token), server, run_id))
    else:
        details = run_async(_details(settings_for(project), run_id))
    if as_json:
        typer.echo(json.dumps(details.document(), indent=2, ensure_ascii=False))
    else:
        typer.echo(run_details_text(details))


async def _details(settings: Settings, run_id: str) -> RunDetails:
    from pyflue.describe import StoreRuns, describe
    from pyflue.wiring import open_store, require_store

    require_store(settings)
    async with open_store(settings) as store:
        return await describe(StoreRuns(store), run_id)


async def _remote_details(client: PyFlueClient, server: str, run_id: str) -> RunDetails:
    from pyflue.describe import ServerRuns, describe

    async with client:
        return await describe(ServerRuns(client, server), run_id)


def run_details_text(details: RunDetails) -> str:
    from pyflue.render import run_details

    return run_details(details)


@runs_app.callback()
def runs(
    ctx: typer.Context,
    status: Annotated[RunStatus | None, typer.Option(help="only runs with this status")] = None,
    workflow: Annotated[str | None, typer.Option(metavar="NAME",
                                                 autocompletion=complete_workflow,
                                                 help="only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(metavar="N", callback=between(1, 1000),
                                          help="how many (1 to 1000)")] = 20,
    fmt: FormatOpt = Format.pretty,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List recent runs, newest first: this machine's, or a server's with --server.
    `pyflue runs prune` deletes old ones."""
    if ctx.invoked_subcommand is not None:
        return
    found: list[Run]
    if server:
        found = run_async(_remote_runs(client_for(server, token), status, workflow, limit))
    else:
        found = run_async(_runs(settings_for(project), status, workflow, limit))
    if fmt is Format.json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in found], indent=2))
    elif fmt is Format.ndjson:
        for r in found:
            typer.echo(r.model_dump_json())
    elif not found and (status or workflow):
        typer.echo("no runs match: `pyflue runs` without --status and --workflow lists them all")
    elif not found:
        typer.echo("no runs yet: start one with `pyflue run NAME --payload '{...}'`")
    else:
        for r in found:
            typer.echo(run_line_text(r))


async def _runs(settings: Settings, status: RunStatus | None, workflow: str | None,
                limit: int) -> list[Run]:
    from pyflue.wiring import has_store, open_store

    if not has_store(settings):  # looking makes no store
        return []
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
        rows = run_async(_remote_workflows(client_for(server, token)))
        _print_workflows(rows, fmt, f"no workflows on {server}")
        return
    settings = settings_for(project)
    try:
        found = WorkflowRegistry(settings.project_dir).summaries()
    except PyflueError as exc:
        die(exc.message, EXIT_USAGE)
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
def artifacts(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", autocompletion=complete_run_id,
                                          help="a run id, or a unique prefix of it or of its "
                                          "ULID part")],
    download: Annotated[Path | None, typer.Option(
        "--download", metavar="DIR", help="write the artifacts to DIR/<name> (all of them, or "
        "those --name picks), each checked against its sha256")] = None,
    names: Annotated[list[str] | None, typer.Option(
        "--name", metavar="NAME", help="with --download: only this artifact, or the folder of "
        "artifacts of this name (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON (the body "
                                          "of GET /runs/{run_id}/artifacts)")] = False,
    project: ProjectOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List a run's artifacts (name, size, sha256, type, when saved), or fetch them with
    --download DIR: from this machine's store, or from a server with --server."""
    if names and download is None:
        die("--name picks what --download fetches: add --download DIR", EXIT_USAGE)
    if server:
        found, written = run_async(_remote_artifacts(client_for(server, token), server, run_id,
                                                     download, names or []))
    else:
        found, written = run_async(_local_artifacts(settings_for(project), run_id, download,
                                                    names or []))
    run, listed = found
    if as_json:
        typer.echo(json.dumps({"run_id": run, "artifacts": [
            a.model_dump(mode="json") for a in listed]}, indent=2, ensure_ascii=False))
    elif download is None:
        typer.echo(artifact_table(listed) if listed else f"run {run} has no artifacts")
    for path in written:
        typer.echo(f"downloaded {path}", err=as_json)
    if download is not None and not as_json:
        typer.echo(f"{len(written)} artifact(s) of {run} in {download}")


async def _local_artifacts(settings: Settings, run_id: str, folder: Path | None,
                           names: list[str]) -> tuple[tuple[str, list[Any]], list[Path]]:
    from pyflue.artifacts import artifact_store
    from pyflue.artifacts.download import StoreSource
    from pyflue.describe import StoreRuns, resolve
    from pyflue.wiring import open_store, require_store

    require_store(settings)
    async with open_store(settings) as store:
        run_id = (await resolve(StoreRuns(store), run_id)).run_id
        return await _fetch(StoreSource(artifact_store(settings, store)), run_id, folder, names)


async def _remote_artifacts(client: PyFlueClient, server: str, run_id: str,
                            folder: Path | None, names: list[str]
                            ) -> tuple[tuple[str, list[Any]], list[Path]]:
    from pyflue.artifacts.download import ServerSource
    from pyflue.describe import ServerRuns, resolve

    async with client:
        run_id = (await resolve(ServerRuns(client, server), run_id)).run_id
        return await _fetch(ServerSource(client), run_id, folder, names)


async def _fetch(source: Any, run_id: str, folder: Path | None, names: list[str]
                 ) -> tuple[tuple[str, list[Any]], list[Path]]:
    from pyflue.artifacts.download import chosen, download
    from pyflue.errors import ArtifactNotFound, ConfigError

    listed = await source.list(run_id)
    if folder is None:
        return (run_id, listed), []
    try:
        picked = chosen(listed, names, run_id)
    except ArtifactNotFound as exc:  # a --name of the user's: bad input (exit 2)
        raise ConfigError(exc.message) from None
    return (run_id, picked), await download(source, run_id, picked, folder)


def artifact_table(listed: list[Any]) -> str:
    from pyflue.render import artifact_rows

    return artifact_rows(listed)
