"""What ``pyflue config`` shows: every effective setting, its value (secrets and the passwords
in URLs as ``***``) and where it came from (the default, the settings file, the environment)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pyflue.settings import LoadedSettings, masked_url, setting_keys, toml_value

MASK = "***"


def shown(value: Any) -> Any:
    """``value`` as it may be shown: a secret is ``***`` (None when unset), a URL loses its
    password, a path is a string."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "@" in value and "://" in value:
        return masked_url(value)
    return value


def settings_document(loaded: LoadedSettings, environ: Mapping[str, str]) -> dict[str, Any]:
    """``{"project_dir", "file", "settings": {KEY: {"variable", "value", "source", "from"}}}``:
    ``source`` is ``default``, ``file``, ``env`` or ``option``; ``from`` names the file, the
    variable or the option (or says how the project was found). ``store_url`` is the store in
    use (the SQLite file under the project when unset). ``environ`` gives ``server_url``, which
    only the CLI reads (``PYFLUE_SERVER_URL``)."""
    settings = loaded.settings
    rows: dict[str, dict[str, Any]] = {}
    for key, spec in setting_keys().items():
        holder = getattr(settings, spec.group) if spec.group else settings
        value = settings.resolved_store_url() if key == "store_url" else getattr(holder,
                                                                                 spec.field)
        source = loaded.sources[key]
        rows[key] = {"variable": spec.variables[0], "value": shown(value),
                     "source": source.kind, "from": source.where}
    server = environ.get("PYFLUE_SERVER_URL")
    rows["server_url"] = {"variable": "PYFLUE_SERVER_URL", "value": shown(server),
                          "source": "env" if server is not None else "default",
                          "from": "PYFLUE_SERVER_URL" if server is not None else None}
    return {"project_dir": str(settings.project_dir),
            "file": loaded.file.label if loaded.file else None, "settings": rows}


def settings_table(document: dict[str, Any]) -> str:
    """The document as aligned ``KEY VALUE FROM`` lines (values as TOML writes them)."""
    file = document["file"] or ("none (pyflue.toml, or [tool.pyflue] in pyproject.toml, at "
                                "the project folder)")
    lines = [f"project: {document['project_dir']}", f"file:    {file}", ""]
    rows = [("KEY", "VALUE", "FROM")]
    for key, row in document["settings"].items():
        value = "unset" if row["value"] is None else toml_value(row["value"])
        origin = {"env": f"env {row['from']}", "file": "file",
                  "option": row["from"]}.get(row["source"], "default")
        if key == "project_dir" and row["source"] == "default":
            origin = "found upward"
        rows.append((key, value, origin))
    key_width = max(len(r[0]) for r in rows)
    value_width = min(max(len(r[1]) for r in rows), 48)
    lines += [f"{k:<{key_width}}  {v:<{value_width}}  {o}".rstrip() for k, v, o in rows]
    return "\n".join(lines)
