"""Workflow discovery: modules in ``workflows/`` and ``src/workflows/`` exporting ``run(ctx)``.

File names give workflow names; nested folders give dotted names (``ci/lint.py`` is
``ci.lint``); files and folders starting with ``_`` or ``.`` are skipped.
"""

from __future__ import annotations

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


class WorkflowRegistry:
    """The workflows of one project folder."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self._loaded: dict[str, Workflow] = {}

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
                    raise WorkflowLoadError(
                        f"workflow {name!r} is defined twice: {found[name].path} and {path}; "
                        "rename or remove one of them"
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
                out.append(WorkflowSummary(name, source.path, error=exc.message))
        return out

    def get(self, name: str) -> Workflow:
        """Imports and returns a workflow. WorkflowNotFound lists the available ones."""
        if name in self._loaded:
            return self._loaded[name]
        sources = self.sources()
        if name not in sources:
            available = ", ".join(sorted(sources)) or "none"
            raise WorkflowNotFound(
                f"unknown workflow {name!r}; available: {available}",
                hint=f"looked in {', '.join(str(self.project_dir / r) for r in ROOTS)}",
            )
        workflow = _load(sources[name])
        self._loaded[name] = workflow
        return workflow


def _load(source: WorkflowSource) -> Workflow:
    module_name = f"pyflue_workflows.{source.name}"
    spec = importlib.util.spec_from_file_location(module_name, source.path)
    if spec is None or spec.loader is None:
        raise WorkflowLoadError(f"cannot load workflow file {source.path}")
    module = importlib.util.module_from_spec(spec)
    root = str(source.root)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise WorkflowLoadError(
            f"workflow {source.name!r} failed to import from {source.path}: "
            f"{type(exc).__name__}: {exc}",
            details="".join(traceback.format_exception(exc)),
        ) from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise WorkflowLoadError(
            f"workflow file {source.path} does not define a run(ctx) function; "
            "add `async def run(ctx): ...`"
        )
    return Workflow(source.name, source.path, run, module)
