from __future__ import annotations

import pytest

from pyflue.errors import WorkspacePathError
from pyflue.sandbox.paths import confine, relative_parts


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.txt", "/workspace/a.txt"),
        ("./src/../a.txt", "/workspace/a.txt"),
        ("/workspace/x/y", "/workspace/x/y"),
        (".", "/workspace"),
        ("//workspace//a", "/workspace/a"),
    ],
)
def test_paths_inside_the_workspace_are_normalized(path: str, expected: str) -> None:
    assert confine(path, root="/workspace") == expected


def test_relative_paths_start_at_the_cwd() -> None:
    assert confine("b.txt", root="/workspace", cwd="/workspace/sub") == "/workspace/sub/b.txt"


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/etc/passwd", "a/../../x", "/workspace/../etc", "/workspacex/a", "/"]
)
def test_paths_leaving_the_workspace_are_refused(path: str) -> None:
    with pytest.raises(WorkspacePathError, match="outside the workspace"):
        confine(path, root="/workspace")


def test_nul_bytes_and_empty_paths_are_refused() -> None:
    with pytest.raises(WorkspacePathError, match="NUL"):
        confine("a\x00b", root="/workspace")
    with pytest.raises(WorkspacePathError, match="empty path"):
        confine("", root="/workspace")


def test_relative_parts_lists_components_below_the_root() -> None:
    assert relative_parts("/workspace/a/b", "/workspace") == ["a", "b"]
    assert relative_parts("/workspace", "/workspace") == []
