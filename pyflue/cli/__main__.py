"""``python -m pyflue.cli``: the same as the ``pyflue`` command."""

from pyflue.cli import main

main()
