"""Settings from the project's file (``pyflue.toml`` or ``[tool.pyflue]`` in ``pyproject.toml``),
the environment over it, through the CLI as a user runs it: in a project folder of its own, from
a subfolder, against the real Docker engine and a real SQLite store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO

# The container's memory limit, under cgroup v2 or v1.
MEMORY_MAX = ("cat /sys/fs/cgroup/memory.max 2>/dev/null || "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")


def a_project(root: Path, settings: str, *, name: str = "pyflue.toml") -> Path:
    """A project at ``root`` with the shell_steps workflow and ``settings`` in ``name``."""
    (root / "workflows").mkdir(parents=True)
    shutil.copy(REPO / "workflows" / "shell_steps.py", root / "workflows")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / name).write_text(settings)
    return root


def pyflue(cwd: Path, *argv: str, timeout: float = 120,
           **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYFLUE_", "ANTHROPIC_"))}
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *argv], cwd=cwd,
                          env={**clean, "PYTHONPATH": str(REPO), **env}, capture_output=True,
                          text=True, timeout=timeout)


def memory_max(cwd: Path, **env: str) -> int:
    done = pyflue(cwd, "run", "shell_steps", "-q", "-p", json.dumps({"steps": [MEMORY_MAX]}),
                  **env)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["steps"][0]["stdout"])


def test_the_files_sandbox_memory_reaches_the_container_and_the_environment_overrides_it(
    tmp_path: Path,
) -> None:
    store = tmp_path / "elsewhere" / "runs.db"
    project = a_project(tmp_path / "p", f'sandbox_memory = "300m"\n'
                                        f'store_url = "sqlite+aiosqlite:///{store}"\n')
    here = project / "sub" / "deeper"  # found upward, like git

    assert memory_max(here) == 300 * 1024 * 1024
    assert store.is_file() and not (project / ".pyflue").exists()  # the file's store_url

    assert memory_max(here, PYFLUE_SANDBOX_MEMORY="400m") == 400 * 1024 * 1024


def test_a_pyproject_tool_pyflue_table_is_read_too(tmp_path: Path) -> None:
    project = a_project(tmp_path / "p", '[project]\nname = "p"\n\n[tool.pyflue]\n'
                                        'sandbox_memory = "320m"\n', name="pyproject.toml")
    assert memory_max(project / "sub") == 320 * 1024 * 1024
    assert (project / ".pyflue" / "pyflue.db").is_file()


@pytest.mark.parametrize("command", [["run", "shell_steps"], ["doctor"], ["serve"], ["config"]])
def test_a_bad_value_in_the_file_stops_the_command_at_start_with_one_line_and_exit_2(
    tmp_path: Path, command: list[str],
) -> None:
    project = a_project(tmp_path / "p", 'sandbox_memory = "lots"\n')
    done = pyflue(project / "sub", *command)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f'error: {project.resolve()}/pyflue.toml: sandbox_memory = "lots" is not a size: write '
        "it like 512m or 2g"]
    assert not (project / ".pyflue").exists()


@pytest.mark.parametrize(("settings", "line"), [
    ('sandbox_memroy = "1g"\n',
     'sandbox_memroy is not a setting: did you mean sandbox_memory = "2g"? (docs/settings.md '
     "lists every key)"),
    ('PYFLUE_PORT = 8000\n',
     "PYFLUE_PORT is not a setting: did you mean port = 2024? (docs/settings.md lists every key)"),
    ("port = \"many\"\n",
     'port = "many": input should be a valid integer, unable to parse string as an integer; '
     "write it like port = 2024"),
    ('sandbox_network = "host"\n',
     "sandbox_network = 'host' is not an allowed network: use one of none, bridge, e.g. none"),
    ('api_token = "s3cret"\n',
     "api_token is a secret, which pyflue never reads from a file (files end up in version "
     "control): set PYFLUE_API_TOKEN in the environment"),
    ('anthropic_api_key = "sk-ant-x"\n',
     "anthropic_api_key is a secret, which pyflue never reads from a file (files end up in "
     "version control): set PYFLUE_ANTHROPIC_API_KEY in the environment"),
    ('store_url = "postgresql+asyncpg://bob:hunter2@db/pyflue"\n',
     "store_url holds a password, which pyflue never reads from a file: leave it out of the URL "
     "and set PYFLUE_STORE_PASSWORD in the environment"),
    ("[sandbox]\nmemory = \"1g\"\n",
     "sandbox is a table, but settings are plain keys: write them directly under the file's top "
     'level or [tool.pyflue], e.g. sandbox_memory = "2g"'),
    ('server_url = "http://ci:2024"\n',
     "server_url is not read from a settings file: set PYFLUE_SERVER_URL in the environment or "
     "pass --server URL"),
])
def test_a_refused_key_is_one_line_naming_the_file_the_key_and_an_example(
    tmp_path: Path, settings: str, line: str,
) -> None:
    project = a_project(tmp_path / "p", settings)
    done = pyflue(project, "doctor")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: {project.resolve()}/pyflue.toml: {line}"]
    assert "hunter2" not in done.stderr and "s3cret" not in done.stderr


def test_the_environment_wins_over_a_bad_file_value_and_unknown_keys_still_count(
    tmp_path: Path,
) -> None:
    project = a_project(tmp_path / "p", 'sandbox_memory = "lots"\n')
    assert pyflue(project, "config", PYFLUE_SANDBOX_MEMORY="1g").returncode == 0
    (project / "pyflue.toml").write_text('sandbox_memory = "lots"\nnope = 1\n')
    done = pyflue(project, "config", PYFLUE_SANDBOX_MEMORY="1g")
    assert done.returncode == 2 and "nope is not a setting" in done.stderr


def test_invalid_toml_and_two_files_with_settings_are_refused(tmp_path: Path) -> None:
    project = a_project(tmp_path / "p", 'sandbox_memory = "1g\n')
    done = pyflue(project, "config")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {project.resolve()}/pyflue.toml is not valid TOML (")
    (project / "pyflue.toml").write_text('sandbox_memory = "1g"\n')
    (project / "pyproject.toml").write_text('[tool.pyflue]\nmax_concurrency = 2\n')
    done = pyflue(project, "config")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: settings in both {project.resolve()}/pyflue.toml and {project.resolve()}"
        "/pyproject.toml [tool.pyflue]: keep them in one of the two (pyflue would not know "
        "which wins)"]
    (project / "pyproject.toml").write_text('[tool.pyflue]\n')  # an empty table only marks it
    assert pyflue(project, "config").returncode == 0


def test_config_shows_each_value_and_its_source_with_secrets_masked(tmp_path: Path) -> None:
    project = a_project(tmp_path / "p", 'sandbox_memory = "1g"\nmax_concurrency = 8\n'
                                        'store_url = "postgresql+asyncpg://bob@db.example/x"\n')
    env = {"PYFLUE_MAX_CONCURRENCY": "3", "PYFLUE_STORE_PASSWORD": "hunter2",
           "PYFLUE_API_TOKEN": "tok-s3cret", "ANTHROPIC_API_KEY": "sk-ant-s3cret",
           "PYFLUE_SERVER_URL": "http://ci:pw-s3cret@ci.example:2024"}
    done = pyflue(project / "sub", "config", "--json", **env)
    assert done.returncode == 0, done.stderr
    for secret in ("hunter2", "s3cret"):
        assert secret not in done.stdout
    doc: dict[str, Any] = json.loads(done.stdout)
    rows = doc["settings"]
    file = f"{project.resolve()}/pyflue.toml"
    assert doc["project_dir"] == str(project.resolve()) and doc["file"] == file
    assert rows["sandbox_memory"] == {"variable": "PYFLUE_SANDBOX_MEMORY", "value": "1g",
                                      "source": "file", "from": file}
    assert rows["max_concurrency"] == {"variable": "PYFLUE_MAX_CONCURRENCY", "value": 3,
                                       "source": "env", "from": "PYFLUE_MAX_CONCURRENCY"}
    assert rows["sandbox_cpus"] == {"variable": "PYFLUE_SANDBOX_CPUS", "value": 1.0,
                                    "source": "default", "from": None}
    assert rows["store_url"]["value"] == "postgresql+asyncpg://bob:***@db.example/x"
    assert rows["store_password"]["value"] == rows["api_token"]["value"] == "***"
    assert rows["anthropic_api_key"] == {"variable": "PYFLUE_ANTHROPIC_API_KEY", "value": "***",
                                         "source": "env", "from": "ANTHROPIC_API_KEY"}
    assert rows["server_url"]["value"] == "http://ci:***@ci.example:2024"
    assert rows["project_dir"]["source"] == "default"

    table = pyflue(project / "sub", "config", **env)
    assert table.returncode == 0 and "s3cret" not in table.stdout
    lines = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[3:]}
    assert lines["sandbox_memory"] == ['"1g"', "file"]
    assert lines["max_concurrency"] == ["3", "env", "PYFLUE_MAX_CONCURRENCY"]
    assert lines["api_token"] == ['"***"', "env", "PYFLUE_API_TOKEN"]
    assert lines["model"] == ["unset", "default"]
    assert not (project / ".pyflue").exists()  # config opens no store, needs no engine


def test_config_without_a_file_names_the_default_store(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    done = pyflue(tmp_path, "config", "--json", DOCKER_HOST="tcp://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["file"] is None
    assert doc["settings"]["store_url"] == {
        "variable": "PYFLUE_STORE_URL", "source": "default", "from": None,
        "value": f"sqlite+aiosqlite:///{tmp_path.resolve()}/.pyflue/pyflue.db"}
    assert not (tmp_path / ".pyflue").exists()


def test_doctor_checks_the_store_the_file_names(tmp_path: Path) -> None:
    store = tmp_path / "store" / "doctor.db"
    project = a_project(tmp_path / "p", f'store_url = "sqlite+aiosqlite:///{store}"\n')
    done = pyflue(project, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert str(store) in json.dumps(checks["run store"]), checks["run store"]
    assert store.is_file() and not (project / ".pyflue").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_listens_on_the_files_port_and_uses_its_store(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "served.db"
    project = a_project(tmp_path / "p", f'port = {port}\n'
                                        f'store_url = "sqlite+aiosqlite:///{store}"\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "pyflue.cli", "serve"], cwd=project / "sub",
                              env={**clean, "PYTHONPATH": str(REPO)}, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "pyflue serve did not answer on the file's port"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/workflows", timeout=5) as r:
            assert "shell_steps" in r.read().decode()
        assert store.is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
