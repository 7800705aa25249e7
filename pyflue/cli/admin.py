"""Running the machine: ``pyflue doctor``, ``serve``, ``reap``, ``runs prune``, ``images
build|list`` and ``token new|hash``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pyflue.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ProjectOpt,
    app,
    between,
    die,
    error_line,
    exit_code_for,
    images_app,
    run_async,
    runs_app,
    settings_for,
    token_app,
)
from pyflue.errors import PyflueError
from pyflue.status import RunStatus

if TYPE_CHECKING:
    from datetime import timedelta

    from pyflue.models import Run
    from pyflue.settings import Settings


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help='print {"ok", "checks": [...]} on '
                                          "stdout")] = False,
    project: ProjectOpt = None,
) -> None:
    """Check the Docker engine, runtimes, sandbox image and run store, with fixes."""
    from pyflue.doctor import checks_document, run_checks

    settings = settings_for(project)
    checks = run_async(run_checks(settings))
    if as_json:
        doc = checks_document(checks)
        typer.echo(json.dumps(doc, indent=2))
        raise typer.Exit(EXIT_OK if doc["ok"] else EXIT_FAILED)
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
    host: Annotated[str | None, typer.Option(metavar="HOST",
                                             help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="port (default 2024)")] = None,
    store_url: Annotated[str | None, typer.Option(metavar="URL",
                                                  help="SQLAlchemy async URL of the store")]
    = None,
    max_concurrency: Annotated[int | None, typer.Option(
        metavar="N", callback=between(1), help="runs at once")] = None,
    insecure_bind: Annotated[
        bool, typer.Option("--insecure-bind", help="allow a non-loopback address without a token")
    ] = False,
    reload: Annotated[
        bool, typer.Option("--reload", help="restart the server when a file under workflows/ "
                                            "changes (for development)")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Start the control plane (HTTP API, scheduler) on 127.0.0.1:2024."""
    import uvicorn

    from pyflue.api.app import create_app
    from pyflue.api.serving import reload_dirs, settings_environment, uvicorn_options

    settings = settings_for(project)
    changes: dict[str, Any] = {k: v for k, v in {
        "host": host, "port": port, "max_concurrency": max_concurrency,
    }.items() if v is not None}
    if insecure_bind:
        changes["allow_insecure_bind"] = True
    server = settings.server.model_copy(update=changes)
    settings = settings.model_copy(update={"server": server, **(
        {"store_url": store_url} if store_url else {})})
    problem = bind_problem(server.host, server.api_token is not None or server.tokens_file
                           is not None, server.allow_insecure_bind)
    if problem:
        die(problem, EXIT_USAGE)
    from pyflue.tenants import Tokens

    try:  # a token file the server cannot use stops it here, naming the entry
        Tokens.load(None, server.tokens_file)
    except PyflueError as exc:
        die(exc.message, EXIT_USAGE)
    if not reload:
        uvicorn.run(create_app(settings), log_level="info", **uvicorn_options(settings))
        return
    import os

    os.environ.update(settings_environment(settings))  # the reloaded child reads them
    uvicorn.run("pyflue.api.serving:app_from_environment", factory=True, reload=True,
                reload_dirs=reload_dirs(settings), log_level="info", **uvicorn_options(settings))


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
            "send `Authorization: Bearer <token>`) or PYFLUE_TOKENS_FILE, or pass "
            "--insecure-bind to serve anyway")


@app.command()
def reap(
    as_json: Annotated[bool, typer.Option("--json", help='print {"reaped": [RUN_ID, ...]} on '
                                          "stdout")] = False,
    project: ProjectOpt = None,
) -> None:
    """Remove containers and volumes left by runs that are no longer running."""
    from pyflue.wiring import open_runner

    settings = settings_for(project)

    async def _reap() -> list[str]:
        async with open_runner(settings) as runner:
            return await runner.workers.reap()

    reaped: list[str] = run_async(_reap())
    if as_json:
        typer.echo(json.dumps({"reaped": reaped}, indent=2))
        return
    typer.echo(f"reaped {len(reaped)} sandbox(es)" + "".join(f"\n  {r}" for r in reaped))


@images_app.command("build")
def images_build(
    only: Annotated[list[str] | None, typer.Argument(metavar="IMAGE",
                                                     help="image names (default: all)")] = None,
    base: Annotated[
        str | None, typer.Option(metavar="IMAGE",
                                 help="base image (default: debian:bookworm-slim or bootstrap)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rebuild every layer")] = False,
    project: ProjectOpt = None,
) -> None:
    """Build the images in images/ (bootstrapping a Debian base when no registry answers)."""
    from pyflue.sandbox.docker.images import build_all

    settings = settings_for(project)
    try:
        tags = build_all(settings.project_dir, docker_host=settings.docker_host,
                         progress=lambda line: typer.echo(line, err=True),
                         base=base, no_cache=no_cache, only=only)
    except PyflueError as exc:
        die(exc.message, exit_code_for(exc))
    typer.echo("\n".join(tags))


@images_app.command("list")
def images_list(
    as_json: Annotated[bool, typer.Option("--json", help='print [{"tag", "present", '
                                          '"context"}, ...] on stdout')] = False,
    project: ProjectOpt = None,
) -> None:
    """List the images pyflue builds and whether each exists."""
    from pyflue.sandbox.docker.images import image_states

    settings = settings_for(project)
    try:
        states = image_states(settings.project_dir, settings.docker_host)
    except PyflueError as exc:
        die(exc.message, exit_code_for(exc))
    if as_json:
        typer.echo(json.dumps([{"tag": s.tag, "present": s.present, "context": str(s.context)}
                               for s in states], indent=2))
        return
    for state in states:
        typer.echo(f"{state.tag:<32} {'present' if state.present else 'missing':<8} "
                   f"{state.context}")


@app.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help='print {"project_dir", "file", '
                                          '"settings": {KEY: {...}}} on stdout')] = False,
    project: ProjectOpt = None,
) -> None:
    """Show the effective settings and where each comes from (secrets masked)."""
    import os

    from pyflue.errors import InvalidSettings
    from pyflue.settings import load_settings_with_sources
    from pyflue.settings_report import settings_document, settings_table

    try:
        loaded = load_settings_with_sources(project)
    except InvalidSettings as exc:
        for problem in exc.problems:
            typer.echo(error_line(problem), err=True)
        raise typer.Exit(EXIT_USAGE) from None
    document = settings_document(loaded, os.environ)
    typer.echo(json.dumps(document, indent=2) if as_json else settings_table(document))


@runs_app.command("prune")
def runs_prune(
    older_than: Annotated[str, typer.Option(
        "--older-than", metavar="AGE", help="delete runs that finished longer ago than this, "
        "e.g. 30d, 12h, 90m, 2w")],
    status: Annotated[list[RunStatus] | None, typer.Option(
        "--status", metavar="STATUS", help="only runs that ended so: completed, failed, "
        "cancelled, timed_out, interrupted (repeatable; default: every finished run)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list them, delete nothing")]
    = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help='print {"deleted" | "would_delete": [RUN_ID, ...]} on stdout')] = False,
    project: ProjectOpt = None,
) -> None:
    """Delete finished runs older than AGE from this machine's store (PYFLUE_STORE_URL):
    their records, events and uploads. Queued and running runs are never touched."""
    from pyflue.retention import parse_age

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        die(f"--older-than: {exc}", EXIT_USAGE)
    settings = settings_for(project)
    gone: list[Run] = run_async(_prune(settings, age, status or None, dry_run))
    key = "would_delete" if dry_run else "deleted"
    if as_json:
        typer.echo(json.dumps({key: [r.run_id for r in gone]}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(gone)} run(s) finished over {older_than} ago"
               + "".join(f"\n  {r.run_id}  {r.status.value}" for r in gone))


async def _prune(settings: Settings, age: timedelta, statuses: list[RunStatus] | None,
                 dry_run: bool) -> list[Run]:
    from pyflue.retention import Retention
    from pyflue.wiring import forget_hooks, has_store, open_store

    if not has_store(settings):  # looking makes no store
        return []
    async with open_store(settings) as store:
        retention = Retention(store, forget_hooks(settings, store))
        return await retention.prune(age, statuses=statuses, dry_run=dry_run)


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option(help="the token's name (the runs it creates carry it)")],
    tenant: Annotated[str, typer.Option(help="the tenant whose runs it sees and creates")],
    admin: Annotated[bool, typer.Option("--admin", help="sees every tenant's runs")] = False,
    max_concurrency: Annotated[int | None, typer.Option(
        min=1, help="runs of the tenant executing at once")] = None,
) -> None:
    """Print a new random token (on stderr, once) and its PYFLUE_TOKENS_FILE entry (stdout)."""
    from pyflue.tenants import new_token, token_hash

    token = new_token()
    typer.echo(f"token (give it to the client; it is not stored anywhere): {token}", err=True)
    typer.echo(json.dumps({"name": name, "sha256": token_hash(token), "tenant": tenant,
                           "admin": admin, "max_concurrency": max_concurrency}))


@token_app.command("hash")
def token_hash_command(
    token: Annotated[str | None, typer.Argument(
        help="the token; omit it to read it from stdin (keeps it out of the shell history)")]
    = None,
) -> None:
    """Print the SHA-256 of a token, for the `sha256` of its PYFLUE_TOKENS_FILE entry."""
    import sys

    from pyflue.tenants import token_hash

    given = token if token is not None else sys.stdin.read().strip()
    if not given:
        die("no token given: pass it as the argument or on stdin", EXIT_USAGE)
    typer.echo(token_hash(given))
