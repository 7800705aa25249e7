"""Run stores: the port in :mod:`.base`, adapters in :mod:`.sql` and :mod:`.memory`."""

from __future__ import annotations

from pyflue.store.base import NewEvent, RunStore, RunUpdate
from pyflue.store.memory import MemoryStore
from pyflue.store.sql import SqlStore


def open_store_from_url(url: str) -> RunStore:
    """The store adapter for a URL: ``memory://`` or any SQLAlchemy async URL."""
    if url == "memory://":
        return MemoryStore()
    return SqlStore(url)


__all__ = ["MemoryStore", "NewEvent", "RunStore", "RunUpdate", "SqlStore", "open_store_from_url"]
