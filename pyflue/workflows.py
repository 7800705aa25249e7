"""Workflow discovery: modules in ``workflows/`` and ``src/workflows/`` exporting ``run(ctx)``.

File names give workflow names; nested folders give dotted names (``ci/lint.py`` is
``ci.lint``); files and folders starting with ``_`` or ``.`` are skipped.

A loaded workflow is kept with the hash of its file; :meth:`WorkflowRegistry.get` re-reads the
file each time and imports it again when it changed, so a long-lived server runs the code that
is on disk now (a file that no longer imports fails the next run with the import error; it never
falls back to the old code). Helper modules a workflow imports are not watched: see
``pyflue serve --reload``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pyflue.errors import WorkflowError, WorkflowLoadError, WorkflowNotFound

ROOTS = ("workflows", "src/workflows")


@dataclass(frozen=True)
class WorkflowSource:
    name: str
    path: Path
    root: Path

    @property
    def shown(self) -> str:
        """The file as API clients may see it: relative to the project (``workflows/x.py``)."""
        prefix = f"src/{self.root.name}" if self.root.parent.name == "src" else self.root.name
        return f"{prefix}/{self.path.relative_to(self.root).as_posix()}"


@dataclass(frozen=True)
class Workflow:
    name: str
    path: Path
    run: Callable[..., Any]
    module: ModuleType

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.module) or inspect.getdoc(self.run) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)


@dataclass(frozen=True)
class WorkflowSummary:
    """A discovered workflow as listings show it; ``error`` says why it cannot be loaded."""

    name: str
    path: Path
    description: str = ""
    error: str | None = None
    public_error: str | None = None  # ``error`` without the server's paths, for API clients


class WorkflowRegistry:
    """The workflows of one project folder."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self._loaded: dict[str, tuple[str, Workflow]] = {}  # name -> (file hash, workflow)

    def sources(self) -> dict[str, WorkflowSource]:
        """Every discovered workflow by name. Raises WorkflowLoadError on a duplicate name."""
        found: dict[str, WorkflowSource] = {}
        for rel in ROOTS:
            root = self.project_dir / rel
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*.py")):
                parts = path.relative_to(root).parts
                if any(p.startswith(("_", ".")) for p in parts):
                    continue
                name = ".".join((*parts[:-1], path.stem))
                if name in found:
                    source = WorkflowSource(name, path, root)
                    raise WorkflowLoadError(
                        f"workflow {name!r} is defined twice: {found[name].path} and {path}; "
                        "rename or remove one of them",
                        public=f"workflow {name!r} is defined twice: {found[name].shown} and "
                               f"{source.shown}; rename or remove one of them",
                    )
                found[name] = WorkflowSource(name, path, root)
        return found

    def names(self) -> list[str]:
        return sorted(self.sources())

    def summaries(self) -> list[WorkflowSummary]:
        """Every discovered workflow by name, each imported to read its description; one that
        fails to import is listed with the reason. WorkflowLoadError on a duplicate name."""
        out = []
        for name, source in sorted(self.sources().items()):
            try:
                out.append(WorkflowSummary(name, source.path, self.get(name).description))
            except WorkflowError as exc:
                out.append(WorkflowSummary(name, source.path, error=exc.message,
                                           public_error=exc.public_message))
        return out

    def get(self, name: str) -> Workflow:
        """Imports and returns a workflow, again when its file changed since the last import.
        WorkflowNotFound lists the available ones; WorkflowLoadError says why it cannot load."""
        if name in self._loaded:
            digest, workflow = self._loaded[name]
            if _digest(workflow.path) == digest:
                return workflow
            del self._loaded[name]  # changed or gone: never run the old code
        sources = self.sources()
        if name not in sources:
            available = ", ".join(sorted(sources)) or "none"
            raise WorkflowNotFound(
                f"unknown workflow {name!r}; available: {available}",
                hint=f"looked in {', '.join(str(self.project_dir / r) for r in ROOTS)}",
            )
        source = sources[name]
        try:
            code = source.path.read_bytes()
        except OSError as exc:
            raise WorkflowLoadError(f"cannot read workflow file {source.path}: {exc}",
                                    public=f"cannot read workflow file {source.shown}: "
                                           f"{exc.strerror or type(exc).__name__}") from exc
        workflow = _load(source, code)
        self._loaded[name] = (hashlib.sha256(code).hexdigest(), workflow)
        return workflow


def _digest(path: Path) -> str | None:
    """The hash of the file's bytes, or None when it cannot be read (gone)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _without(exc: BaseException, source: WorkflowSource) -> str:
    """The exception's text with the workflow file's absolute path made relative."""
    return str(exc).replace(str(source.path), source.shown)


def _load(source: WorkflowSource, code: bytes) -> Workflow:
    """Imports ``code`` (the file's bytes, as hashed) as the workflow's module. Compiled here,
    not through the import system, so a stale ``__pycache__`` entry (same size, same second)
    can never stand in for the edited file."""
    module_name = f"pyflue_workflows.{source.name}"
    spec = importlib.util.spec_from_file_location(module_name, source.path)
    if spec is None or spec.loader is None:
        raise WorkflowLoadError(f"cannot load workflow file {source.path}",
                                public=f"cannot load workflow file {source.shown}")
    module = importlib.util.module_from_spec(spec)
    root = str(source.root)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        sys.modules[module_name] = module
        exec(compile(code, str(source.path), "exec", dont_inherit=True), module.__dict__)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise WorkflowLoadError(
            f"workflow {source.name!r} failed to import from {source.path}: "
            f"{type(exc).__name__}: {exc}",
            details="".join(traceback.format_exception(exc)),
            public=f"workflow {source.name!r} failed to import from {source.shown}: "
                   f"{type(exc).__name__}: {_without(exc, source)}",
        ) from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise WorkflowLoadError(
            f"workflow file {source.path} does not define a run(ctx) function; "
            "add `async def run(ctx): ...`",
            public=f"workflow file {source.shown} does not define a run(ctx) function; "
                   "add `async def run(ctx): ...`",
        )
    return Workflow(source.name, source.path, run, module)
