"""The Docker sandbox adapter: :mod:`.lifecycle` owns containers, :mod:`.box` works inside them."""

from __future__ import annotations

from pyflue.sandbox.docker.lifecycle import DockerProvider

__all__ = ["DockerProvider"]
