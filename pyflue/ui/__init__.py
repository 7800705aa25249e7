"""The web dashboard's files (HTML, CSS, JavaScript modules), served at ``/ui`` by
:mod:`pyflue.api.ui`. No build step and nothing fetched from elsewhere: the pages work offline,
and they read only the public HTTP API (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
