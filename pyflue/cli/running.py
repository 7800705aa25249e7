"""Starting and stopping runs: ``pyflue run`` (here), ``invoke`` and ``cancel`` (on a server)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pyflue.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    ProjectOpt,
    ServerOpt,
    StreamFormat,
    TokenOpt,
    app,
    as_usage_errors,
    client_for,
    die,
    error_line,
    event_line,
    exit_code_for_run,
    payload_from,
    run_async,
    settings_for,
)
from pyflue.completion import complete_run_id, complete_workflow
from pyflue.errors import PyflueError
from pyflue.status import RunStatus

if TYPE_CHECKING:
    from pathlib import Path

    from pyflue.client import PyFlueClient
    from pyflue.events import Event
    from pyflue.models import Run
    from pyflue.settings import Settings
    from pyflue.uploads import StagedUpload


UploadOpt = Annotated[list[str] | None, typer.Option(
    "--upload", "-u", metavar="DIR[:DEST]",
    help="copy a local folder into the run's workspace before it starts, at DEST (default: "
         "the folder's name; '.' or '' for the workspace itself); repeatable")]


@app.command()
def run(
    name: Annotated[str, typer.Argument(metavar="NAME", autocompletion=complete_workflow,
                                        help="workflow name, e.g. shell_steps")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", metavar="JSON",
                                 help="payload JSON object ('-' reads stdin)")
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", "-i", metavar="IMAGE",
                                 help="image for this run's container")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live events")] = False,
    events_format: Annotated[
        StreamFormat, typer.Option("--events", help="live events on stderr: pretty or ndjson")
    ] = StreamFormat.pretty,
    as_json: Annotated[bool, typer.Option(
        "--json", help='print {"run_id", "status", "result", "error"} on stdout, whatever the '
        "outcome")] = False,
    upload: UploadOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Run one workflow on this machine: events on stderr, the result JSON on stdout.

    With --events ndjson, stderr has JSON lines only: the events, and for a run that did not
    complete a last {"type": "error", ...} line.

    \b
    Examples:
      pyflue run hello
      pyflue run hello --payload '{"name": "Ada"}'
      echo '{"steps": ["uname -a"]}' | pyflue run shell_steps --payload - --quiet
      pyflue run shell_steps -C path/to/project --json -q -p '{"steps": ["ls"]}'
      pyflue run ci --upload .:src"""
    settings = settings_for(project)
    raw = sys.stdin.read() if payload == "-" else payload
    body = payload_from(raw)
    from pyflue.wiring import run_here

    ndjson = events_format is StreamFormat.ndjson
    final: Run = run_async(_staged(settings, upload or [], lambda staged: run_here(
        settings, name, body, image=image, on_event=_print_live(quiet, events_format),
        on_start=lambda run: None if ndjson else _print_start(run), uploads=staged)))
    _finish(final, as_json, ndjson)


async def _staged(settings: Settings, folders: list[str],
                  main: Callable[[list[StagedUpload]], Awaitable[Run]]) -> Run:
    """Packs each ``--upload DIR[:DEST]`` into the spool, runs ``main`` with them, and removes
    the spool files whatever happens."""
    import asyncio

    from pyflue.uploads import pack_folder, parse_upload_arg

    staged: list[StagedUpload] = []
    try:
        for text in folders:
            folder, dest = parse_upload_arg(text)
            staged.append(await asyncio.to_thread(
                pack_folder, folder, settings.spool_dir, dest=dest,
                limits=settings.sandbox.copy_limits))
        return await main(staged)
    finally:
        for one in staged:
            one.path.unlink(missing_ok=True)


def _print_start(run: Run) -> None:
    _print_start_id(run.run_id)


def _finish(final: Run, as_json: bool = False, ndjson: bool = False) -> NoReturn:
    """Prints a finished run as ``pyflue run`` does (``--json``, ``--events ndjson``) and exits
    with its code."""
    _report(final, as_json, ndjson)
    if final.status is RunStatus.completed:
        raise typer.Exit(EXIT_OK)
    from pyflue.models import end_error

    error = end_error(final.status, final.error, final.reason)
    raise typer.Exit(exit_code_for_run(final.status, error.type if error else None))


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", autocompletion=complete_run_id,
                                          help="the id of an earlier run, or a unique prefix "
                                          "of it or of its ULID part")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live events")] = False,
    events_format: Annotated[
        StreamFormat, typer.Option("--events", help="live events on stderr: pretty or ndjson")
    ] = StreamFormat.pretty,
    server: ServerOpt = None,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Run an earlier run's workflow again with the same payload (and image), printing like
    `pyflue run`; with --server, on that server.

    A run the server does not know but this machine's store does (a `pyflue run` while
    PYFLUE_SERVER_URL is set) runs again here, with a note on stderr."""
    show = _print_live(quiet, events_format)
    if server is None:
        from pyflue.wiring import rerun_here

        settings = settings_for(project)
        _finish(run_async(rerun_here(settings, run_id, on_event=show, on_start=_print_start)))
    client = client_for(server, token, "rerun")
    _finish(run_async(as_usage_errors(
        _remote_or_local_rerun(client, project, server, run_id, show))))


async def _remote_or_local_rerun(client: PyFlueClient, project: Path | None, server: str,
                                 run_id: str, show: Callable[[Event], None]) -> Run:
    from pyflue.client import NotFoundError
    from pyflue.wiring import has_run, rerun_here

    try:
        return await _rerun(client, run_id, show)
    except NotFoundError:
        settings = settings_for(project)
        if not await has_run(settings, run_id):
            raise  # not here either: the server's answer
    typer.echo(f"note: run {run_id} is not on {server}; running it again on this machine",
               err=True)
    return await rerun_here(settings, run_id, on_event=show, on_start=_print_start)


async def _rerun(client: PyFlueClient, run_id: str, show: Callable[[Event], None]) -> Run:
    seen: set[str] = set()

    def on_event(event: Event) -> None:
        if event.run_id not in seen:
            seen.add(event.run_id)
            _print_start_id(event.run_id)
        show(event)

    async with client:
        return await client.runs.rerun(run_id, on_event=on_event)


def _print_start_id(run_id: str) -> None:
    typer.echo(f"run {run_id}", err=True)


def _report(final: Run, as_json: bool, ndjson: bool) -> None:
    """The run's outcome: the result (or the --json document) on stdout, the error on stderr."""
    from pyflue.models import end_error
    from pyflue.render import error_json_line, outcome_document, status_word, why_not_completed

    doc = outcome_document(final)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    elif final.status is RunStatus.completed:
        typer.echo(json.dumps(final.result, indent=2, ensure_ascii=False))
    if ndjson:
        if (line := error_json_line(final)) is not None:
            typer.echo(line, err=True)
    elif end_error(final.status, final.error, final.reason) is not None:
        typer.echo(error_line(f"run {final.run_id} {status_word(final.status)}: "
                              f"{why_not_completed(final)}"), err=True)


def _print_live(quiet: bool, fmt: StreamFormat) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        if not quiet and (line := event_line(event, fmt)) is not None:
            typer.echo(line, err=True)

    return show


@app.command()
def invoke(
    name: Annotated[str, typer.Argument(metavar="NAME", autocompletion=complete_workflow,
                                        help="workflow name on the server, e.g. shell_steps")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", metavar="JSON",
                                 help="payload JSON object ('-' reads stdin)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait and print the result JSON")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="show live events on stderr, then print the result")
    ] = False,
    events_format: Annotated[
        StreamFormat, typer.Option("--events", help="--follow events on stderr: pretty, or "
                                   "ndjson for JSON lines only (as pyflue run)")
    ] = StreamFormat.pretty,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", metavar="KEY",
                                 help="the same key returns the same run")
    ] = None,
    upload: UploadOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Invoke a workflow on a pyflue server (for CI): prints the run id, or with --wait or
    --follow the result; the exit code mirrors the run (0 completed, 1 failed, 3 infrastructure,
    4 timed out, 5 cancelled: docs/cli.md)."""
    if wait and follow:
        die("pass --wait or --follow, not both", EXIT_USAGE)
    raw = sys.stdin.read() if payload == "-" else payload
    body = payload_from(raw)
    client = client_for(server, token, "invoke")
    main = _invoke(client, name, body, wait, follow, events_format, idempotency_key,
                   [_upload_pair(text) for text in upload or []])
    outcome: Run | str = run_async(as_usage_errors(main, not_found=True))
    if isinstance(outcome, str):  # neither --wait nor --follow: the run id of the run started
        typer.echo(outcome)
        raise typer.Exit(EXIT_OK)
    if events_format is StreamFormat.ndjson:  # JSON lines only on stderr, as `pyflue run`
        _finish(outcome, ndjson=True)
    from pyflue.render import status_word, why_not_completed

    typer.echo(f"run {outcome.run_id} {status_word(outcome.status)}", err=True)
    if outcome.status is RunStatus.completed:
        typer.echo(json.dumps(outcome.result, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    typer.echo(error_line(f"run {outcome.run_id} {status_word(outcome.status)}: "
                          f"{why_not_completed(outcome)}"), err=True)
    raise typer.Exit(exit_code_for_run(outcome.status,
                                       outcome.error.type if outcome.error else None))


async def _invoke(
    client: PyFlueClient, name: str, payload: dict[str, Any], wait: bool, follow: bool,
    fmt: StreamFormat, key: str | None, upload: list[tuple[str, str]],
) -> Run | str:
    seen: set[str] = set()

    def show(event: Event) -> None:
        if event.run_id not in seen and fmt is StreamFormat.pretty:
            seen.add(event.run_id)
            typer.echo(f"run {event.run_id}", err=True)
        if (line := event_line(event, fmt)) is not None:
            typer.echo(line, err=True)

    async with client:
        if not (wait or follow):
            started = await client.workflows.invoke(name, payload, wait=False,
                                                    idempotency_key=key, upload=upload)
            return str(started["run_id"])
        return await client.workflows.run(name, payload, idempotency_key=key,
                                          on_event=show if follow else None, upload=upload)


def _upload_pair(text: str) -> tuple[str, str]:
    """``--upload DIR[:DEST]`` as (folder, destination), checked here."""
    from pyflue.uploads import parse_upload_arg

    try:
        folder, dest = parse_upload_arg(text)
    except PyflueError as exc:
        die(exc.message, EXIT_USAGE)
    return str(folder), dest


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", autocompletion=complete_run_id,
                                          help="the id of a queued or running run, or a "
                                          "unique prefix of it or of its ULID part")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Cancel a queued or running run; its command and container are killed.

    Without a server, a run of this project's store: a `pyflue run` in another terminal stops
    within a second (exit 5) and this waits for its end. With --server (or PYFLUE_SERVER_URL),
    a run of that server, matched by prefix among its 1000 most recent runs; one the server
    does not know but this project's store does is cancelled here, with a note."""
    if server is None:
        _cancelled(run_async(_cancel_here(project, run_id)))
    client = client_for(server, token, "cancel")
    body: dict[str, Any] | Run = run_async(as_usage_errors(
        _cancel_remote_or_here(client, server, project, run_id)))
    if isinstance(body, dict):
        typer.echo(f"{body['status']} {body['run_id']}")
        raise typer.Exit(EXIT_OK)
    _cancelled(body)


async def _cancel_here(project: Path | None, run_id: str) -> Run:
    from pyflue.wiring import cancel_here

    return await cancel_here(settings_for(project), run_id)


async def _cancel_remote_or_here(client: PyFlueClient, server: str, project: Path | None,
                                 run_id: str) -> dict[str, Any] | Run:
    from pyflue.client import NotFoundError
    from pyflue.describe import ServerRuns, resolve
    from pyflue.errors import RunIdUnknown
    from pyflue.wiring import has_run

    try:
        async with client:
            run = await resolve(ServerRuns(client, server), run_id)
            return await client.runs.cancel(run.run_id)
    except (NotFoundError, RunIdUnknown):
        if not await has_run(settings_for(project), run_id):
            raise  # not here either: the server's answer
    typer.echo(f"note: run {run_id} is not on {server}; cancelling it on this machine",
               err=True)
    return await _cancel_here(project, run_id)


def _cancelled(run: Run) -> NoReturn:
    """``cancelled RUN_ID`` (or the status it ended with), or ``cancelling RUN_ID`` for a run
    whose process has not stopped it yet."""
    from pyflue.render import status_word

    word = status_word(run.status) if run.status.finished else "cancelling"
    typer.echo(f"{word} {run.run_id}")
    raise typer.Exit(EXIT_OK)
