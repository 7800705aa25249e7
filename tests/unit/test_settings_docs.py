"""docs/settings.md lists every ``PYFLUE_*`` variable of :class:`pyflue.settings.Settings`, with
its key in a settings file, its default and description, word for word.

The table sits between ``<!-- settings -->`` and ``<!-- /settings -->``. After changing a
setting, rewrite it with ``.venv/bin/python -m tests.unit.test_settings_docs --write``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from pyflue.settings import (
    ArtifactSettings,
    ModelSettings,
    ObservabilitySettings,
    PoolSettings,
    SandboxDefaults,
    ServerSettings,
    Settings,
    find_project_here,
    setting_keys,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
BLOCK = re.compile(r"<!-- settings -->\n(.*?)<!-- /settings -->\n", re.S)
PARTS: list[type[BaseSettings]] = [Settings, SandboxDefaults, ModelSettings, ServerSettings,
                                   PoolSettings, ArtifactSettings, ObservabilitySettings]


def variables(part: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"{part.model_config.get('env_prefix', '')}{name}".upper()]


def default(field: FieldInfo) -> str:
    if field.default_factory == find_project_here:
        return "found upward from the current folder"
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def file_key(name: str) -> str:
    """The setting's key in pyflue.toml / [tool.pyflue], or why it has none."""
    spec = setting_keys()[name]
    if spec.secret:
        return "environment only (a secret)"
    if name == "project_dir":
        return "environment only (the file's folder is the project)"
    return f"`{name}`"


def table() -> str:
    rows = ["| Variable | File key | Default | Meaning |", "| --- | --- | --- | --- |"]
    for part in PARTS:
        for name, field in part.model_fields.items():
            if isinstance(field.default_factory, type):  # a group: its own rows follow
                continue
            found = variables(part, name, field)
            names = ", ".join(f"`{v}`" for v in found)
            key = file_key(found[0].lower().removeprefix("pyflue_"))
            rows.append(f"| {names} | {key} | {default(field)} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda _m: f"<!-- settings -->\n{table()}<!-- /settings -->\n", text)


def test_every_setting_has_a_description() -> None:
    missing = [f"{part.__name__}.{name}" for part in PARTS
               for name, field in part.model_fields.items()
               if not field.description and not isinstance(field.default_factory, type)]
    assert missing == []


def test_the_docs_table_matches_the_settings_model() -> None:
    text = DOC.read_text()
    assert BLOCK.search(text), "docs/settings.md has no <!-- settings --> block"
    assert regenerate(text) == text, (
        "docs/settings.md is out of date with pyflue/settings.py: run "
        "`.venv/bin/python -m tests.unit.test_settings_docs --write`")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    DOC.write_text(regenerate(DOC.read_text()))
