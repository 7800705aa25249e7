"""Shell completion of workflow names and run ids (``pyflue --install-completion``).

The shell runs ``pyflue`` on every Tab, so this answers from the files alone: workflow names
from the project's ``workflows/`` folders (no workflow is imported), run ids from the local
SQLite run store, opened read-only (none is created, no server is asked). Only the standard
library and :mod:`pyflue.project` load here.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from pyflue.errors import PyflueError
from pyflue.project import find_project_here, read_settings_file

RECENT_RUNS = 100  # the newest runs offered


def _project(ctx: Any) -> Path:
    """The project of the command line being completed: ``-C DIR`` if typed before the word,
    else ``PYFLUE_PROJECT_DIR``, else found upward from the current folder."""
    given = getattr(ctx, "params", {}).get("project")
    if given:
        return Path(given).resolve()
    if os.environ.get("PYFLUE_PROJECT_DIR"):
        return Path(os.environ["PYFLUE_PROJECT_DIR"])
    return find_project_here()


def store_file(project: Path) -> Path | None:
    """The SQLite file of the project's run store (``PYFLUE_STORE_URL``, else the settings
    file's ``store_url``, else ``.pyflue/pyflue.db``); None for a store that is no local file."""
    url = os.environ.get("PYFLUE_STORE_URL")
    if url is None:
        try:
            file = read_settings_file(project)
        except PyflueError:
            file = None
        url = file.values.get("store_url") if file else None
    if not url:
        return project / ".pyflue" / "pyflue.db"
    if not isinstance(url, str) or not url.startswith("sqlite") or ":///" not in url:
        return None  # PostgreSQL or memory://: nothing to read without connecting
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


def recent_runs(project: Path, limit: int = RECENT_RUNS) -> list[tuple[str, str, str]]:
    """``(run_id, workflow, status)`` of the newest runs in the local store, newest first;
    empty when there is no store (none is created)."""
    path = store_file(project)
    if path is None or not path.is_file():
        return []
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             timeout=0.5) as conn:
            rows = conn.execute("SELECT run_id, workflow, status FROM runs "
                                "ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
    except sqlite3.Error:
        return []
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def complete_run_id(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    """Run ids for ``show``, ``logs``, ``cancel`` and ``rerun``: whole ids when the word starts
    like one (``workflow:...``), else the ULID parts (which every one of them takes as a unique
    prefix, and which hold no ``:`` for bash to split words at)."""
    runs = recent_runs(_project(ctx))
    whole = [(run_id, f"{status}") for run_id, _w, status in runs
             if incomplete and run_id.startswith(incomplete)]
    if whole:
        return whole
    # a ULID in any case names the run; the typed part is kept as typed (shells filter on it)
    return [(incomplete + ulid[len(incomplete):], f"{workflow} {status}")
            for ulid, workflow, status in ((r.rsplit(":", 1)[-1], w, s) for r, w, s in runs)
            if ulid.upper().startswith(incomplete.upper())]


def complete_workflow(ctx: Any, incomplete: str) -> list[str]:
    """The project's workflow names (for ``run``, ``invoke`` and ``runs --workflow``)."""
    from pyflue.workflows import WorkflowRegistry

    try:
        names = WorkflowRegistry(_project(ctx)).sources()
    except PyflueError:
        return []
    return [name for name in names if name.startswith(incomplete)]
