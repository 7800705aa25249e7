"""Deprecated: the composition root is :mod:`pyflue.wiring` (``open_runner``, ``open_store``,
``docker_provider``, ``store_scope``). Importing this module still works and warns."""

from __future__ import annotations

import warnings

from pyflue.wiring import docker_provider, open_runner, open_store, store_scope

warnings.warn("pyflue.local moved to pyflue.wiring", DeprecationWarning, stacklevel=2)

__all__ = ["docker_provider", "open_runner", "open_store", "store_scope"]
