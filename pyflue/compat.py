"""PyFlue 0.2's workflow-facing names that pyflue spells differently or does not have.

A workflow written for PyFlue 0.2 runs unchanged where pyflue has the same call (most of
``ctx``, ``harness.fs``, ``harness.shell``, ``session.prompt``, ``await ctx.log.info``). For
the rest, each table below maps a PyFlue 0.2 name to what to use instead: the objects a
workflow touches (``ctx``, the harness, its sessions) raise
:class:`~pyflue.errors.NotSupported` with that text when such a name is looked up, and
:func:`upstream_options` does the same for keyword options our methods do not take.
docs/workflows.md ("Coming from PyFlue 0.2") lists every name checked.

This module loads nothing heavy: ``pyflue.context`` imports it, and a workflow file imports that.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from pyflue.errors import NotSupported

P = ParamSpec("P")
R = TypeVar("R")

_TOOLS = "give tools when opening the session: `await harness.session(name, tools=[fn])`"
_ROLE = ('put the role\'s instructions in the agent\'s "instructions" '
         "(create_agent(lambda ctx: {\"instructions\": ...}))")
_NO_MCP = "pyflue has no MCP client; wrap what you need as a tool: " + _TOOLS
_SUBSESSION = ("open another session on the same harness: `await harness.session(\"child\")` "
               "(sessions share the run's container)")
_EVENTS = "follow the run's events instead: `pyflue logs RUN_ID --follow` or client.runs.stream"

CONTEXT: Mapping[str, str] = {
    "agent_id": "use ctx.id (for a workflow it is the run id)",
    "route": "workflows have no agent routes here; ctx.workflow_name and ctx.id name the run",
    "config": ("there is no pyflue.toml config object: read values from ctx.env and configure "
               "agents in create_agent(lambda ctx: {...})"),
}

HARNESS: Mapping[str, str] = {
    "close_mcp_servers": _NO_MCP,
    "backend": "pyflue has one built-in agent loop; choose the model with the agent's \"model\"",
    "sandbox_policy": ('set limits in the agent\'s dict ("memory", "pids", "network", ...), '
                       "within the server's maxima"),
    "instructions": "read harness.config.instructions (set it in create_agent's dict)",
    "tools": "read harness.config.tools, or " + _TOOLS,
    "commands": _TOOLS,
    "command_tools": _TOOLS,
    "skills": _ROLE,
    "roles": _ROLE,
    "on_event": _EVENTS,
    "state_dir": "sessions live in memory for the run; nothing is stored on the host",
    "sandbox_state_dir": "the run's files live in its container: use harness.fs",
}

SESSION: Mapping[str, str] = {
    "stream": ("`await session.prompt(text)`; its model turns and tool calls are run events "
               "as they happen: " + _EVENTS),
    "skill": "prompt with the skill's text: `await session.prompt(...)`",
    "subagent": _SUBSESSION,
    "task": _SUBSESSION,
    "run_python": "write the script with harness.fs.write_file and run it: "
                  "`await harness.shell(\"python3 script.py\")`",
    "start_python": "run Python in the container with `await harness.shell(\"python3 ...\")`",
    "dump_python_state": "keep state in files in the workspace (harness.fs)",
    "load_python_state": "keep state in files in the workspace (harness.fs)",
    "register_python_dataclass": "keep state in files in the workspace (harness.fs)",
    "compact": "open a new session for a fresh context: `await harness.session(\"next\")`",
    "abort": "cancel the whole run: `pyflue cancel RUN_ID` (or POST /runs/{id}/cancel)",
    "close": "nothing to close: a session ends with the run",
    "delete": "forget it with `await harness.sessions.delete(name)`",
    "agent": "keep the harness from `await ctx.init(agent)` in a variable",
    "metadata": "session.name is its name; the run's events record the rest",
    "sandbox": "use harness.fs and harness.shell (the run's container)",
    "python_backend": "run Python in the container with `await harness.shell(\"python3 ...\")`",
    "context_root": "the workspace is harness.fs.root",
    "instructions": "read harness.config.instructions",
    "skills": _ROLE,
    "roles": _ROLE,
    "session_role": _ROLE,
    "deleted": "sessions are never deleted during a run",
    "db_path": "sessions live in memory for the run; nothing is stored on the host",
    "safe_id": "use session.name",
}

#: Keyword options of PyFlue 0.2 methods that pyflue's do not take, and what to do instead.
OPTIONS: Mapping[str, str] = {
    "role": _ROLE,
    "thinking_level": "not available; pick a model with the agent's \"model\" or model=...",
    "retries": "structured results are re-asked up to PYFLUE_MAX_RESULT_RETRIES times",
    "stream": _EVENTS,
    "images": "not available yet: describe the image, or write it to the workspace and let a "
              "tool read it",
    "commands": _TOOLS,
    "tools": _TOOLS,
    "session_id": ("every session shares the run's one container; call harness.shell without "
                   "session_id"),
    "config_path": "there is no pyflue.toml: configure the agent in create_agent's dict",
}


_AS_TOOLS = ("pass typed Python functions as tools: `await harness.session(name, tools=[fn])` "
             "(or pyflue.tools.tool / pyflue.tools.Tool)")
_IN_RUN = "inside run(ctx), call `await ctx.init(create_agent(lambda ctx: {...}))`"

#: Names a workflow file imported from PyFlue 0.2's package that pyflue's does not export.
TOP_LEVEL: Mapping[str, str] = {
    "createAgent": "use create_agent (pyflue spells names in snake_case)",
    "PyFlueContext": "use FlueContext",
    "init": _IN_RUN,
    "init_agent": _IN_RUN,
    "define_tool": _AS_TOOLS,
    "create_tools": _AS_TOOLS,
    "createTools": _AS_TOOLS,
    "define_command": _AS_TOOLS,
    "PyFlueCommand": _AS_TOOLS,
    "dispatch": "start another run: `await PyFlueClient(url).workflows.invoke(name, payload)`",
    "connect_mcp_server": _NO_MCP,
    "connect_mcp_server_stdio": _NO_MCP,
    "connectMcpServer": _NO_MCP,
    "connectMcpServerStdio": _NO_MCP,
    "MCPClient": _NO_MCP,
    "PyFlueAgent": "annotate with pyflue.Harness (what ctx.init returns)",
    "PyFlueSession": "annotate with pyflue.sessions.Session",
    "PyFlueSessions": "annotate with pyflue.harness.Sessions",
    "PyFlueFs": "annotate with pyflue.harness.WorkspaceFS",
    "Skill": _ROLE,
    "Role": _ROLE,
    "load_skill": _ROLE,
    "load_skills": _ROLE,
    "load_roles": _ROLE,
    "define_config": "settings are PYFLUE_* environment variables (docs/server.md)",
    "observe": _EVENTS,
    "unobserve": _EVENTS,
    "create_opentelemetry_observer": _EVENTS,
}


def missing_import(name: str) -> ImportError | None:
    """The error for ``from pyflue import <name>`` when ``name`` is PyFlue 0.2's, else None
    (an ImportError, so ``from pyflue import ...`` shows this message, not Python's)."""
    if name not in TOP_LEVEL:
        return None
    return ImportError(f"pyflue.{name} is PyFlue 0.2's and not in pyflue: {TOP_LEVEL[name]}",
                       name=name)


def missing(where: str, name: str, table: Mapping[str, str]) -> AttributeError:
    """The error for looking up ``name`` on ``where``: NotSupported naming the replacement
    when ``name`` is PyFlue 0.2's, else a plain AttributeError."""
    if name in table:
        return NotSupported(f"{where}.{name} is PyFlue 0.2's and not in pyflue: {table[name]}")
    return AttributeError(f"{where!r} has no attribute {name!r}")


def upstream_options(where: str, otherwise: str = "", **hints: str
                     ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wraps a method so a keyword it does not take raises NotSupported naming what to use
    instead (PyFlue 0.2 took more options), rather than a bare TypeError. ``hints`` override
    :data:`OPTIONS` for this method; ``otherwise`` is the hint for a keyword neither names."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        known = set(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            for key in kwargs:
                if key not in known:
                    hint = hints.get(key) or OPTIONS.get(key) or otherwise or (
                        "see docs/workflows.md, \"Coming from PyFlue 0.2\"")
                    raise NotSupported(f"{where}(..., {key}=...) is not an option here: {hint}")
            return fn(*args, **kwargs)

        return checked

    return wrap


#: PyFlue 0.2's session-level file and shell helpers: session.<name> is harness.<path> here.
SESSION_HELPERS: Mapping[str, tuple[str, ...]] = {
    "shell": ("shell",), "fs": ("fs",),
    "read_file": ("fs", "read_file"), "read_bytes": ("fs", "read_bytes"),
    "write_file": ("fs", "write_file"), "write_bytes": ("fs", "write_file"),
    "stat_file": ("fs", "stat"), "exists": ("fs", "exists"), "mkdir": ("fs", "mkdir"),
    "rm": ("fs", "rm"),
}


def session_helper(harness: object, name: str) -> Any:
    """What PyFlue 0.2's ``session.<name>`` was, found on the session's harness."""
    value: Any = harness
    for part in SESSION_HELPERS[name]:
        value = getattr(value, part)
    return value


def stat_item(fields: Mapping[str, Any], key: str) -> Any:
    """``stat[key]`` as PyFlue 0.2's dict answered it, from a FileStat's fields."""
    is_dir, is_file = fields["kind"] == "dir", fields["kind"] == "file"
    link = fields["kind"] == "symlink"
    upstream: dict[str, Any] = {
        "path": fields["path"], "size": fields["size"], "mtime": fields["mtime"],
        "is_dir": is_dir, "is_directory": is_dir, "isDirectory": is_dir,
        "is_file": is_file, "isFile": is_file,
        "is_symbolic_link": link, "isSymbolicLink": link,
    }
    if key not in upstream:
        raise KeyError(f"{key!r}: a FileStat has path, kind, size, mode, mtime, link_target")
    return upstream[key]
