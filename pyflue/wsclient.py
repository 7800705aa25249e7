"""Deprecated: the WebSocket client is :mod:`pyflue.client.ws` (``Outcome`` and
``WorkflowConnection`` are also in :mod:`pyflue.client`). Importing this module still works and
warns."""

from __future__ import annotations

import warnings

from pyflue.client.ws import Outcome, WorkflowConnection, follow

warnings.warn("pyflue.wsclient moved to pyflue.client.ws", DeprecationWarning, stacklevel=2)

__all__ = ["Outcome", "WorkflowConnection", "follow"]
