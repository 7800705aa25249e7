"""Sandboxes: the port in :mod:`.base`; adapters :mod:`.docker` (the product) and :mod:`.fake`."""

from __future__ import annotations

from pyflue.sandbox.base import (
    ExecStatus,
    FileStat,
    PutEntry,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
)

__all__ = ["ExecStatus", "FileStat", "PutEntry", "Sandbox", "SandboxProvider", "SandboxSpec"]
