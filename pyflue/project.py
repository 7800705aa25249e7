"""The project folder and its settings file, with the standard library only (shell completion
reads them too, and must answer in a blink).

The project is found upward from the current folder like git finds its repository. Its settings
file is ``pyflue.toml`` at the project root, or the ``[tool.pyflue]`` table of its
``pyproject.toml``; :func:`pyflue.settings.load_settings` lays the environment over it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyflue.errors import InvalidSettings

# What makes a folder a pyflue project, looked for upward from the current folder like git.
PROJECT_MARKERS = ("workflows", "src/workflows", ".pyflue")
SETTINGS_FILE = "pyflue.toml"


def find_project(start: Path) -> Path:
    """The project folder for work started in ``start``: the nearest of ``start`` and its
    parents holding ``workflows/``, ``src/workflows/`` or ``.pyflue/`` (the run store), a
    ``pyflue.toml``, or a ``pyproject.toml`` with a ``[tool.pyflue]`` table; ``start`` itself
    when none does."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).is_dir() for marker in PROJECT_MARKERS):
            # src/ of a src/workflows/ project holds workflows/ too: the project is above it
            if folder.name == "src" and not (folder / ".pyflue").is_dir() \
                    and (folder / "workflows").is_dir():
                return folder.parent
            return folder
        if (folder / SETTINGS_FILE).is_file() or _declares_pyflue(folder / "pyproject.toml"):
            return folder
    return start


def find_project_here() -> Path:
    """:func:`find_project` from the current folder (the default of ``PYFLUE_PROJECT_DIR``)."""
    return find_project(Path.cwd())


def _mentions_pyflue(pyproject: Path) -> str | None:
    """The text of ``pyproject`` when it may hold a ``[tool.pyflue]`` table (most
    ``pyproject.toml`` files do not: no need to parse them)."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if "tool.pyflue" in text else None


def _declares_pyflue(pyproject: Path) -> bool:
    text = _mentions_pyflue(pyproject)
    if text is None:
        return False
    try:
        tool = tomllib.loads(text).get("tool")
    except tomllib.TOMLDecodeError:
        return True  # it names tool.pyflue but does not parse: the settings loader says why
    return isinstance(tool, dict) and "pyflue" in tool


@dataclass(frozen=True)
class SettingsFile:
    """The settings a project's file holds: ``label`` names it in messages (its path, and the
    table for a ``pyproject.toml``); ``values`` is its table as TOML read it."""

    path: Path
    label: str
    values: dict[str, Any] = field(default_factory=dict)


def read_settings_file(project: Path) -> SettingsFile | None:
    """The settings file of ``project``: ``pyflue.toml``, or the ``[tool.pyflue]`` table of
    ``pyproject.toml``; None when it has neither.

    Raises :class:`~pyflue.errors.InvalidSettings` when a file does not parse, or when both
    hold settings (an empty ``[tool.pyflue]`` table, which marks the project, is no conflict).
    """
    found: list[SettingsFile] = []
    own = project / SETTINGS_FILE
    if own.is_file():
        found.append(SettingsFile(own, str(own), _parse(own, own.read_bytes())))
    pyproject = project / "pyproject.toml"
    text = _mentions_pyflue(pyproject)
    if text is not None:
        label = f"{pyproject} [tool.pyflue]"
        tool = _parse(pyproject, text.encode()).get("tool")
        table = tool.get("pyflue") if isinstance(tool, dict) else None
        if isinstance(table, dict):
            found.append(SettingsFile(pyproject, label, table))
        elif table is not None:
            raise InvalidSettings([f"{label}: tool.pyflue must be a table: write "
                                   '[tool.pyflue] and under it e.g. sandbox_memory = "1g"'])
    if len(found) == 2 and found[0].values and found[1].values:
        raise InvalidSettings([
            f"settings in both {found[0].path} and {found[1].label}: keep them in one "
            f"of the two (pyflue would not know which wins)"])
    for candidate in found:
        if candidate.values:
            return candidate
    return found[0] if found else None


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidSettings([f"{path} is not UTF-8 text: save it as UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSettings([f"{path} is not valid TOML ({exc}): write settings like "
                               'sandbox_memory = "1g"']) from None
