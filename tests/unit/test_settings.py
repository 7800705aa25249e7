"""Settings refused at the edge: each bad PYFLUE_* variable is one line naming it and an example,
and ``pyflue serve``, ``run`` and ``doctor`` stop at start with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyflue.errors import InvalidSettings
from pyflue.settings import load_settings

REPO = Path(__file__).resolve().parents[2]

BAD = {
    "PYFLUE_SANDBOX_MEMORY": ("lots", "error: PYFLUE_SANDBOX_MEMORY='lots' is not a size: "
                                      "write it like 512m or 2g"),
    "PYFLUE_SANDBOX_NETWORK": ("host", "error: PYFLUE_SANDBOX_NETWORK='host' is not an allowed "
                                       "network: use one of none, bridge, e.g. none"),
    "PYFLUE_MODEL": ("nope/x", "error: PYFLUE_MODEL='nope/x' is not a known model: write it "
                               "like anthropic/claude-haiku-4-5 or scripted/demo"),
    "PYFLUE_STORE_URL": ("not a url", "error: PYFLUE_STORE_URL='not a url' is not a database "
                                      "URL: write it like sqlite+aiosqlite:///path/pyflue.db"),
}


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return {**env, "PYTHONPATH": str(REPO),
            "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'pyflue.db'}", **extra}


@pytest.mark.parametrize("command", [["serve"], ["run", "hello"], ["doctor"]])
@pytest.mark.parametrize("variable", sorted(BAD))
def test_a_bad_setting_stops_the_command_at_start_with_one_line_and_exit_2(
    command: list[str], variable: str, tmp_path: Path
) -> None:
    value, line = BAD[variable]
    done = subprocess.run([sys.executable, "-m", "pyflue.cli", *command], cwd=REPO,
                          env=clean_env(tmp_path, **{variable: value}), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [line] or done.stderr.startswith(line), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "pydantic" not in done.stderr
    assert not (tmp_path / "pyflue.db").exists()  # nothing was started


def test_every_bad_variable_is_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # One of each group of settings; a check across fields (the network) waits for its fields.
    bad = {k: v for k, (v, _line) in BAD.items() if k != "PYFLUE_SANDBOX_NETWORK"}
    for variable, value in {**bad, "PYFLUE_PORT": "x"}.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    named = sorted(p.split("=")[0] for p in caught.value.problems)
    assert named == sorted([*bad, "PYFLUE_PORT"])


def test_a_store_url_password_never_shows_in_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLUE_STORE_URL", "mysql://user:sekrit@db/pyflue")
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    assert caught.value.problems == [
        "PYFLUE_STORE_URL='mysql://user:***@db/pyflue' names the driver 'mysql', which the "
        "store cannot use: write it like sqlite+aiosqlite:///path/pyflue.db or "
        "postgresql+asyncpg://user@host/db"]


def test_a_list_setting_that_is_not_json_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYFLUE_SANDBOX_ALLOWED_NETWORKS", "bridge")
    with pytest.raises(InvalidSettings, match="PYFLUE_SANDBOX_ALLOWED_NETWORKS is not valid JSON"):
        load_settings()


def test_valid_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLUE_SANDBOX_MEMORY", "1.5GiB")
    monkeypatch.setenv("PYFLUE_MODEL", "scripted/demo")
    monkeypatch.setenv("PYFLUE_STORE_URL", "memory://")
    settings = load_settings()
    assert settings.sandbox.memory == "1.5GiB" and settings.models.model == "scripted/demo"
