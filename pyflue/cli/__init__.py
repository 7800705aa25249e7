"""The ``pyflue`` command. Commands parse, call the library, render; the work lives elsewhere.

One module per group of commands: :mod:`.running` (run, invoke, cancel), :mod:`.reading` (logs,
runs, workflows), :mod:`.admin` (doctor, serve, reap, images); :mod:`.common` holds what they
share (options, settings, exit codes). Only typer and the vocabulary the options name load up
front: a command imports what it uses when it runs, so ``pyflue --help`` and ``pyflue
--version`` answer at once.
"""

from __future__ import annotations

# The help lists the commands in the order their modules register them.
# isort: off
from pyflue.cli import running, reading, admin
# isort: on

from pyflue.cli.admin import bind_problem
from pyflue.cli.common import app

__all__ = ["admin", "app", "bind_problem", "main", "reading", "running"]


def main() -> None:
    app(prog_name="pyflue")  # the same name (and completion variable) under python -m
