"""The composition root's labels: the reaper's scope of a store."""

from __future__ import annotations

from pyflue.settings import Settings
from pyflue.wiring import store_scope


def test_the_store_scope_does_not_depend_on_the_password() -> None:
    url = "postgresql+asyncpg://pyflue:{}@db:5432/pyflue"
    assert store_scope(Settings(store_url=url.format("old"))) == store_scope(
        Settings(store_url=url.format("new")))
    assert store_scope(Settings(store_url=url.format("old").replace(":old", ""),
                                store_password="rotated")) == store_scope(
        Settings(store_url=url.format("old")))


def test_the_store_scope_tells_stores_apart() -> None:
    one = Settings(store_url="postgresql+asyncpg://pyflue:pw@db:5432/one")
    other = Settings(store_url="postgresql+asyncpg://pyflue:pw@db:5432/other")
    assert store_scope(one) != store_scope(other)
