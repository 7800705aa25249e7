"""Workspace path confinement: pure logic shared by every sandbox adapter.

User paths are relative to the harness cwd or absolute inside the workspace. ``..`` that leaves
the workspace, absolute paths elsewhere and NUL bytes are refused here; symlinks are checked
against the sandbox by :meth:`pyflue.harness.WorkspaceFS.resolve`.
"""

from __future__ import annotations

import posixpath

from pyflue.errors import WorkspacePathError


def is_inside(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(path: str, *, root: str, cwd: str | None = None) -> str:
    """The absolute, normalized path of ``path`` inside ``root``, or WorkspacePathError."""
    if not isinstance(path, str):
        raise WorkspacePathError(f"a workspace path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise WorkspacePathError(f"path {path!r} contains a NUL byte")
    if path == "":
        raise WorkspacePathError("empty path: name a file or folder inside the workspace")
    base = cwd or root
    joined = path if path.startswith("/") else posixpath.join(base, path)
    normalized = posixpath.normpath(joined)
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if not is_inside(normalized, root):
        raise WorkspacePathError(
            f"path {path!r} resolves to {normalized}, outside the workspace {root}: "
            "use a path inside the workspace"
        )
    return normalized


def relative_parts(path: str, root: str) -> list[str]:
    """The components of an already confined ``path`` below ``root``."""
    rel = posixpath.relpath(path, root)
    return [] if rel == "." else rel.split("/")
