"""The Docker sandbox adapter.

:mod:`.lifecycle` owns containers (create hardened, start, remove, reap); :mod:`.box` is the
work inside one, over a :mod:`.channel` that carries its commands and file operations
(:mod:`.exec_channel`: ``docker exec`` and the archive API) and the engine's :mod:`.probe` of
its state. :mod:`.engine` connects and translates docker-py's errors at this edge.
"""

from __future__ import annotations

from pyflue.sandbox.docker.lifecycle import DockerProvider

__all__ = ["DockerProvider"]
