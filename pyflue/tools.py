"""Tools an agent can call during a prompt.

Built-ins act on the run's container through the harness (``harness.shell`` and ``harness.fs``),
never on the host: ``bash``, ``read``, ``write``, ``edit``, ``ls``, ``glob``, ``grep``.
Workflows add their own with :func:`tool` (a typed Python function) or :class:`Tool` (a name, a
JSON schema and a callable). Output longer than the cap is cut with a marker that tells the
model how to see more.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError, create_model

from pyflue._bridge import in_daemon_thread
from pyflue.errors import ConfigError, PyflueError
from pyflue.llm.base import ToolSpec

if TYPE_CHECKING:
    from pyflue.harness import Harness


class ToolError(Exception):
    """Raised by a tool to report a failure to the model (sent back as an error result)."""


ToolFn = Callable[..., Any | Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """A tool: what the model sees (name, description, JSON schema) and what runs.

    ``fn`` receives the validated arguments as keyword arguments, plus ``harness=`` when its
    signature has a ``harness`` parameter. It may be async. Its return value is shown to the
    model: a string as it is, anything else as JSON.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    fn: ToolFn
    validator: type[BaseModel] | None = None

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)

    async def run(self, arguments: dict[str, Any], harness: Harness) -> str:
        if self.validator is not None:
            try:
                arguments = dict(self.validator.model_validate(arguments))
            except ValidationError as exc:
                raise ToolError(f"invalid arguments for {self.name}: {_errors(exc)}") from None
        if "harness" in _parameters(self.fn):
            arguments = {**arguments, "harness": harness}
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**arguments)
        else:  # synchronous tool code never runs on the event loop
            value = await in_daemon_thread(functools.partial(self.fn, **arguments))
            if inspect.isawaitable(value):
                value = await value
        return value if isinstance(value, str) else json.dumps(value, default=str, indent=1)


_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def tool(
    fn: ToolFn | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Makes a :class:`Tool` from a typed function; usable as ``@tool`` or ``@tool(name=...)``.

    The JSON schema comes from the parameters' annotations and defaults; the description
    from the docstring. A ``harness`` parameter is passed the run's harness, not the model's.
    """

    def make(f: ToolFn) -> Tool:
        return function_tool(f, name=name, description=description)

    return make(fn) if fn is not None else make


def function_tool(fn: ToolFn, *, name: str | None = None, description: str | None = None) -> Tool:
    tool_name = name or fn.__name__
    if not _NAME.match(tool_name):
        raise ConfigError(f"tool name {tool_name!r} must match [a-zA-Z0-9_-], 1-64 characters")
    hints = _annotations(fn)
    fields: dict[str, Any] = {}
    for pname, param in _parameters(fn).items():
        if pname == "harness":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {tool_name!r}: *args/**kwargs cannot be described to a model")
        if pname not in hints:
            raise ConfigError(f"tool {tool_name!r}: parameter {pname!r} needs a type annotation")
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hints[pname], default)
    model = create_model(f"{tool_name}_input", **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    text = description or inspect.getdoc(fn) or f"Calls {tool_name}."
    return Tool(tool_name, text, schema, fn, model)


def as_tool(value: Any) -> Tool:
    if isinstance(value, Tool):
        return value
    if callable(value):
        return function_tool(value)
    raise ConfigError(f"a tool must be a function or a pyflue Tool, not {type(value).__name__}")


def _annotations(fn: ToolFn) -> dict[str, Any]:
    """The evaluated annotations of ``fn``'s parameters but ``harness`` (which the model never
    sees, and whose annotation may name a type the tool's module did not import)."""
    raw = inspect.get_annotations(fn)
    scope = getattr(inspect.unwrap(fn), "__globals__", {})
    return {name: eval(value, scope) if isinstance(value, str) else value
            for name, value in raw.items() if name not in ("harness", "return")}


def _parameters(fn: ToolFn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())


def clip(text: str, cap: int, hint: str) -> str:
    """``text`` cut to ``cap`` characters, with a marker that says what was left and ``hint``."""
    if len(text) <= cap:
        return text
    return f"{text[:cap]}\n[... {len(text) - cap} more characters not shown; {hint}]"


# -- built-in tools ----------------------------------------------------------------------------

# Characters one `read` returns at most: under the default tool output cap, so the line
# window marker is never cut off.
READ_BUDGET = 24_000
GREP_LIMIT = 500


async def _bash(harness: Harness, command: str, timeout: float = 120.0) -> str:
    result = await harness.shell(command, timeout=timeout)
    parts = [f"exit code: {result['exit_code']}"]
    if result["timed_out"]:
        parts.append(f"(timed out after {timeout:g} s and was killed)")
    if result["stdout"]:
        parts.append(result["stdout"])
    if result["stderr"]:
        parts.append(f"[stderr]\n{result['stderr']}")
    return "\n".join(parts)


async def _read(harness: Harness, path: str, offset: int = 1, limit: int = 2000) -> str:
    if offset < 1 or limit < 1:
        raise ToolError("offset and limit must be at least 1")
    # Only the head of a large file comes into the server (PYFLUE_TOOL_READ_MAX_BYTES).
    data, size = await harness.fs.read_head(path, harness.tool_read_max)
    head_only = size > len(data)
    if head_only and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]  # whole lines only (no half a character)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:  # NUL bytes: not text, whatever the encoding says
        return f"{path} is a binary file of {size} bytes"
    lines = text.splitlines()
    note = (f"[{path} is {size} bytes; only its first {len(data)} bytes were read (the tool "
            "read limit): use bash (e.g. `tail -n +N FILE | head`) for the rest]")
    if not lines:
        return f"{path} is empty"
    if offset > len(lines):
        if head_only:
            raise ToolError(f"offset {offset} is past the {len(lines)} lines read. " + note)
        raise ToolError(f"{path} has {len(lines)} lines; offset {offset} is past its end")
    shown: list[str] = []
    budget = READ_BUDGET
    for n, line in enumerate(lines[offset - 1 : offset - 1 + limit], start=offset):
        cut = f" [... line cut: {len(line) - 2000} more characters]" if len(line) > 2000 else ""
        entry = f"{n:>6}\t{line[:2000]}{cut}"
        budget -= len(entry) + 1
        if budget < 0 and shown:
            break  # keep the answer under the tool output cap: whole lines, then the marker
        shown.append(entry)
    last = offset + len(shown) - 1
    if head_only and last == len(lines):
        shown.append(note)
    elif last < len(lines):
        shown.append(f"[lines {offset}-{last} of {len(lines)}; "
                     f"call read with offset={last + 1} to see more]")
    elif offset > 1:
        shown.append(f"[lines {offset}-{last} of {len(lines)}]")
    return "\n".join(shown)


async def _write(harness: Harness, path: str, content: str) -> str:
    await harness.fs.write_file(path, content)
    return f"wrote {len(content.encode())} bytes to {path}"


async def _edit(
    harness: Harness, path: str, old_text: str, new_text: str, replace_all: bool = False
) -> str:
    if not old_text:
        raise ToolError("old_text must not be empty; use write to create a file")
    # One byte more than the limit: a file that grew past it meanwhile is seen as too large.
    data, size = await harness.fs.read_head(path, harness.tool_read_max + 1)
    if max(size, len(data)) > harness.tool_read_max:
        raise ToolError(f"{path} is {size} bytes, over the tool read limit of "
                        f"{harness.tool_read_max} (PYFLUE_TOOL_READ_MAX_BYTES): edit it with bash "
                        "(sed, a script) instead")
    text = data.decode("utf-8")
    count = text.count(old_text)
    if count == 0:
        raise ToolError(f"old_text was not found in {path}; read the file and copy it exactly")
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_text occurs {count} times in {path}; include more surrounding text to make it "
            "unique, or pass replace_all=true"
        )
    await harness.fs.write_file(path, text.replace(old_text, new_text))
    return f"replaced {count} occurrence{'s' if count > 1 else ''} in {path}"


async def _ls(harness: Harness, path: str = ".") -> str:
    entries = await harness.fs.listdir(path)
    if not entries:
        return f"{path} is empty"
    return "\n".join(
        f"{e.kind:<7} {e.size:>10}  {e.path.rsplit('/', 1)[-1]}{'/' if e.kind == 'dir' else ''}"
        for e in entries
    )


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses folders, ``*`` and ``?`` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


async def _glob(harness: Harness, pattern: str, path: str = ".") -> str:
    folder = await harness.fs.resolve(path)
    listing = await harness.shell(
        f"cd {shlex.quote(folder)} && find . -mindepth 1 -not -path './.git/*' -printf '%P\\n'",
        timeout=60,
    )
    if listing["exit_code"] != 0:
        raise ToolError(listing["stderr"].strip() or f"cannot list {path}")
    matcher = glob_regex(pattern)
    hits = sorted(p for p in listing["stdout"].splitlines() if matcher.match(p))
    if not hits:
        return f"no paths match {pattern!r} under {path}"
    shown = "\n".join(hits[:500])
    return shown if len(hits) <= 500 else f"{shown}\n[... {len(hits) - 500} more; narrow it]"


async def _grep(
    harness: Harness, pattern: str, path: str = ".", glob: str | None = None,
    ignore_case: bool = False,
) -> str:
    folder = await harness.fs.resolve(path)
    flags = "-rnIE" + ("i" if ignore_case else "")
    include = f" --include={shlex.quote(glob)}" if glob else ""
    # No `| head`: grep's own exit code must survive (1 no match, 2 error); the shell output
    # cap bounds what is kept, and the match limit is applied here.
    found = await harness.shell(
        f"cd {shlex.quote(folder)} && grep {flags}{include} --exclude-dir=.git -- "
        f"{shlex.quote(pattern)} .",
        timeout=60,
    )
    if found["exit_code"] not in (0, 1):  # grep: 1 is "no match", 2 is a real error
        raise ToolError(found["stderr"].strip() or f"grep failed with exit code "
                        f"{found['exit_code']}")
    hits = [line.removeprefix("./") for line in found["stdout"].splitlines()]
    if not hits:
        return f"no matches for {pattern!r} under {path}"
    if len(hits) > GREP_LIMIT:
        return "\n".join(hits[:GREP_LIMIT]) + (
            f"\n[... more than {GREP_LIMIT} matches; narrow the pattern, the path or the glob]")
    return "\n".join(hits)


def builtin_tools() -> list[Tool]:
    """The tools every agent has, all acting inside the run's container."""
    specs: list[tuple[str, str, ToolFn]] = [
        ("bash", "Run a bash command in the workspace (cwd is the agent's folder). Returns "
                 "the exit code, stdout and stderr. Default timeout 120 s.", _bash),
        ("read", "Read a text file with line numbers; use offset (1-based) and limit for "
                 "long files.", _read),
        ("write", "Create or overwrite a file with the given content (folders are "
                  "created).", _write),
        ("edit", "Replace old_text with new_text in a file. old_text must match exactly and "
                 "be unique unless replace_all is true.", _edit),
        ("ls", "List a folder: kind, size and name of each entry.", _ls),
        ("glob", "Find paths matching a glob pattern such as **/*.py under a folder.", _glob),
        ("grep", "Search file contents with an extended regular expression; returns "
                 "path:line:text for each match (at most 500).", _grep),
    ]
    return [function_tool(fn, name=name, description=text) for name, text, fn in specs]


def check_unique(tools: Sequence[Tool]) -> None:
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
        seen.add(t.name)


def tool_failure(exc: BaseException) -> str:
    """The text an error result shows the model."""
    if isinstance(exc, ToolError):
        return str(exc)
    if isinstance(exc, PyflueError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
