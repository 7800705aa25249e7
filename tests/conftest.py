from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteWorkflow = Callable[[str, str], Path]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "workflows").mkdir()
    return tmp_path


@pytest.fixture
def write_workflow(project: Path) -> WriteWorkflow:
    """Writes workflows/<name>.py (dots make folders) into the test's project folder."""

    def write(name: str, source: str) -> Path:
        path = project / "workflows" / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return write
