"""What every ``pyflue`` command shares: the app, options, settings, exit codes, and the one
way a command runs its async work and turns pyflue's errors into one line and an exit code.

Exit codes (the table in docs/cli.md): 0 success / run completed; 1 the run failed or a check
failed; 2 bad input or settings; 3 infrastructure (Docker engine, image, store, server, model
provider); 4 the run timed out; 5 the run was cancelled; 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from pyflue import __version__
from pyflue.errors import INFRASTRUCTURE_TYPES, ConfigError, PyflueError, WorkflowError
from pyflue.status import RunStatus

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
    add_completion=True,  # --install-completion, --show-completion (docs/cli.md)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: loading rich would double the start-up time
)
images_app = typer.Typer(help="Build and list the sandbox images in images/.", no_args_is_help=True)
app.add_typer(images_app, name="images")
# `pyflue runs` lists (its callback, in reading.py); `pyflue runs prune` deletes (admin.py).
runs_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None)
app.add_typer(runs_app, name="runs")
token_app = typer.Typer(help="Make API tokens and their entries for PYFLUE_TOKENS_FILE.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA, EXIT_TIMED_OUT, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


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
    typer.Option("--project", "-C", metavar="DIR",
                 help="project folder (default: found upward from the current folder, like git)"),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="pretty, json or ndjson")]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", "-s", envvar="PYFLUE_SERVER_URL", metavar="URL",
                 help="URL of a pyflue server (`pyflue serve`), e.g. http://127.0.0.1:2024"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="PYFLUE_API_TOKEN", show_default=False, metavar="TOKEN",
                 help="the server's API token (sent as Authorization: Bearer)"),
]



def between(low: int, high: int | None = None) -> Callable[[int | None], int | None]:
    """An option callback refusing integers outside ``low..high``; unlike click's ranges it
    keeps the help to the metavar (no ``[0<=x<=9223372036854775807]``)."""

    def check(value: int | None) -> int | None:
        if value is not None and (value < low or (high is not None and value > high)):
            upper = f" and at most {high}" if high is not None else ""
            raise typer.BadParameter(f"{value} is not valid: give a number at least {low}{upper}")
        return value

    return check


def print_version(value: bool) -> None:
    if value:
        typer.echo(f"pyflue {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Python workflows for agent and CI work; every run gets a fresh Docker container."""
    # Colour goes to terminals only (click.echo drops it elsewhere) and never with NO_COLOR
    # set to anything but "" (https://no-color.org); subcommands inherit the context's choice.
    if os.environ.get("NO_COLOR"):
        ctx.color = False


def error_line(message: str) -> str:
    """``error: message``, the word red on a terminal."""
    from pyflue.render import error_word

    return f"{error_word()} {message}"


def settings_for(project: Path | None) -> Settings:
    """The settings from PYFLUE_* variables over the project's settings file (``project``, from
    ``-C``, picks the project); exit 2 with one line per refused variable or file key."""
    from pyflue.errors import InvalidSettings
    from pyflue.settings import load_settings

    try:
        return load_settings(project)
    except InvalidSettings as exc:
        for problem in exc.problems:
            typer.echo(error_line(problem), err=True)
        raise typer.Exit(EXIT_USAGE) from None


def payload_from(raw: str | None) -> dict[str, Any]:
    from pyflue.models import parse_payload

    try:
        return parse_payload(raw)
    except PyflueError as exc:
        die(exc.message, EXIT_USAGE)


def event_line(event: Event, fmt: Format | StreamFormat) -> str | None:
    """An event as ``fmt`` shows it: a JSON line, or the pretty one (None: nothing to show)."""
    from pyflue.render import event_json, pretty_event

    return pretty_event(event) if fmt == Format.pretty else event_json(event)


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(error_line(message), err=True)
    raise typer.Exit(code)


def exit_code_for(exc: PyflueError) -> int:
    """The exit code of a command that stopped on ``exc``."""
    if isinstance(exc, ConfigError | WorkflowError):
        return EXIT_USAGE
    return EXIT_INFRA if exc.type in INFRASTRUCTURE_TYPES else EXIT_FAILED


def exit_code_for_run(status: RunStatus, error_type: str | None) -> int:
    """The exit code that mirrors a finished run: its status, and for a failed run the type of
    its error (an engine down or an image missing is the machine's fault: 3)."""
    if status is RunStatus.failed:
        return EXIT_INFRA if error_type in INFRASTRUCTURE_TYPES else EXIT_FAILED
    return {RunStatus.completed: EXIT_OK, RunStatus.timed_out: EXIT_TIMED_OUT,
            RunStatus.cancelled: EXIT_CANCELLED, RunStatus.interrupted: EXIT_INFRA,
            }.get(status, EXIT_FAILED)


def run_async(main: Any) -> Any:
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
        if exc.type == "unauthorized":  # the server's 401: say how this command sends a token
            die("the server refused the API token (missing or wrong): pass --token TOKEN or "
                "set PYFLUE_API_TOKEN to the server's token", EXIT_USAGE)
        die(exc.message, exit_code_for(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def client_for(server: str | None, token: str | None, command: str = "") -> PyFlueClient:
    """The client for --server / PYFLUE_SERVER_URL; exit 2 when neither names a server."""
    from pyflue.client import PyFlueClient

    if not server:
        hint = {"invoke": "; to run a workflow on this machine use `pyflue run NAME`"}
        die(f"`pyflue {command}` needs a server: pass --server URL or set PYFLUE_SERVER_URL "
             f"(start one with `pyflue serve`){hint.get(command, '')}", EXIT_USAGE)
    if "://" not in server:
        server = f"http://{server}"
    return PyFlueClient(server, token=token or None)


async def as_usage_errors(main: Awaitable[T], *, not_found: bool = False) -> T:
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


def events_document_text(run_id: str, events: list[Event]) -> str:
    from pyflue.render import events_document

    return events_document(run_id, events)


def run_line_text(run: Run) -> str:
    from pyflue.render import run_line

    return run_line(run)
