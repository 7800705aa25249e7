"""`pyflue ... --help` reads like a man page: named placeholders, no click range notation, and
examples for `pyflue run`."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _help(*argv: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pyflue.cli", *argv, "--help"],
                         capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.parametrize("argv", [("logs",), ("runs",), ("serve",), ("show",), ("run",)])
def test_help_shows_no_type_names_or_click_ranges(argv: tuple[str, ...]) -> None:
    text = _help(*argv)
    assert "<int" not in text and "<str>  " not in text.split("Options:")[1]
    assert "<=x" not in text and "x>=" not in text


def test_logs_help_names_its_placeholders() -> None:
    text = _help("logs")
    for placeholder in ("--after N", "--project DIR", "--server URL", "--token TOKEN", "RUN_ID"):
        assert placeholder in text


def test_run_help_names_the_payload_json_and_has_examples() -> None:
    text = _help("run")
    assert "--payload JSON" in text
    assert "Examples:\n    pyflue run hello\n" in text


def test_an_index_below_zero_is_refused_with_the_range_in_words() -> None:
    out = subprocess.run([sys.executable, "-m", "pyflue.cli", "logs", "x", "--after", "-1"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "give a number at least 0" in out.stderr


def test_images_build_names_its_images_once_in_the_usage_line() -> None:
    assert "images build [OPTIONS] [IMAGE]...\n" in _help("images", "build")
