"""Getting the channel helper into every sandbox, and choosing each sandbox's channel.

The helper binary (:mod:`pyflue.sandbox.helper`) goes into a named volume per helper version,
``pyflue-helper-<version>``, filled once per engine: the binary is put through the archive API
into a container that mounts the volume read-write and is never started, then that container
is removed. Every sandbox mounts the volume read-only at :data:`MOUNT` (``nosuid`` does not
apply to named volumes, and exec is allowed; the root filesystem stays read-only). No host
folder is ever bind-mounted. The volume carries the label ``dev.pyflue.helper`` and no run
label, so the reaper never touches it; volumes of other helper versions are removed when a new
one is filled, unless a container still uses them (the engine refuses then).

When the helper cannot be had (no C compiler to build it, a remote or non-unix engine, another
CPU architecture, an image where it cannot run), the sandbox uses the
:class:`~.exec_channel.ExecChannel`; the ``sandbox_channel`` event says which and why.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import platform
import tarfile
from collections.abc import Callable
from typing import Any

import docker.errors

from pyflue._bridge import ThreadBridge
from pyflue.errors import SandboxError
from pyflue.sandbox import helper
from pyflue.sandbox.docker.channel import Channel
from pyflue.sandbox.docker.engine import translated
from pyflue.sandbox.docker.exec_channel import ExecChannel
from pyflue.sandbox.docker.helper_channel import HelperChannel, HelperUnavailable

log = logging.getLogger(__name__)

MOUNT = "/.pyflue"
HELPER = f"{MOUNT}/pyflue-helper"  # the helper's path in every sandbox
LABEL_HELPER = "dev.pyflue.helper"
DEFAULT_SOCKET = "/var/run/docker.sock"
_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def socket_path(base_url: str | None) -> str | None:
    """The engine's unix socket, or None when it is reached some other way."""
    url = base_url or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    return url.removeprefix("unix://") if url.startswith("unix://") else None


class HelperSetup:
    """The helper volume of one engine (prepared once) and the channel of each sandbox."""

    def __init__(self, client: Callable[[], Any], bridge: ThreadBridge,
                 base_url: str | None) -> None:
        self._client = client
        self._bridge = bridge
        self._socket = socket_path(base_url)
        self._lock = asyncio.Lock()
        self._prepared = False
        self.volume: str | None = None  # the volume to mount, once prepared and usable
        self.reason: str | None = None  # why there is none

    async def prepare(self, image: str) -> None:
        """Builds the binary and fills the volume, once; afterwards :attr:`volume` is set,
        or :attr:`reason` says why not."""
        if self._prepared:
            return
        async with self._lock:
            if self._prepared:
                return
            try:
                self.volume = await self._bridge.call(self._prepare, image)
            except (helper.BuildError, SandboxError, OSError) as exc:
                self.reason = f"the helper is not available: {exc}"
                log.warning("%s; sandboxes use docker exec", self.reason)
            self._prepared = True

    def _prepare(self, image: str) -> str | None:
        if self._socket is None:
            self.reason = "the engine is not on a local unix socket"
            return None
        binary = helper.ensure_binary()
        client = self._client()
        with translated("reading Docker engine info"):
            arch = str(client.info().get("Architecture", ""))
        if _ARCH.get(arch, arch) != platform.machine():
            self.reason = f"the engine runs on {arch}, this machine on {platform.machine()}"
            return None
        version = helper.version()
        name = f"pyflue-helper-{version}"
        with translated("creating the helper volume"):
            client.volumes.create(name, driver="local", labels={LABEL_HELPER: version})
        with translated("filling the helper volume", image=image):
            filler = client.api.create_container(
                image, command=["/.pyflue/pyflue-helper"], entrypoint=[], network_disabled=True,
                labels={LABEL_HELPER: version},
                host_config=client.api.create_host_config(
                    mounts=[{"Target": MOUNT, "Source": name, "Type": "volume",
                             "ReadOnly": False}], network_mode="none"))
        try:
            with translated("filling the helper volume"):
                data = binary.read_bytes()
                if not _ready(client.api, filler["Id"], len(data)):
                    client.api.put_archive(filler["Id"], MOUNT, _helper_tar(data))
        finally:
            with translated("filling the helper volume"):
                client.api.remove_container(filler["Id"], force=True)
        self._remove_old(client, version)
        return name

    def _remove_old(self, client: Any, version: str) -> None:
        try:
            with translated("listing helper volumes"):
                volumes = client.api.volumes(filters={"label": LABEL_HELPER}).get("Volumes") or []
        except SandboxError:
            return
        for v in volumes:
            if (v.get("Labels") or {}).get(LABEL_HELPER) == version:
                continue
            try:
                with translated("removing an old helper volume"):
                    client.api.remove_volume(v["Name"])
            except SandboxError:
                pass  # still mounted by a live sandbox: removed by a later filling

    async def channel(self, api: Any, container_id: str, user: str,
                      on_event: Callable[[str, str | None], None],
                      ready: HelperChannel | None = None) -> Channel:
        """The channel of a started sandbox: the helper's when it starts, else docker exec.
        ``on_event(channel, reason)`` is told which, and told again on a later fallback
        (``"exec"``) or restart of the helper (``"helper"``). ``ready``: a helper channel
        opened beforehand (a warm pool's), taken as it is when it still serves."""
        if ready is not None:
            # Its stream still open: the helper runs (one that dies later is started again)
            if ready.serving:
                self._adopt(ready, on_event)
                on_event("helper", None)
                return ready
            await ready.close()  # it died in the pool: a new one below
        fallback = ExecChannel(api, self._bridge, container_id)
        if self.volume is None or self._socket is None:
            on_event("exec", self.reason or "the helper is not set up")
            return fallback
        channel = HelperChannel(api, self._bridge, container_id, user=user, fallback=fallback)
        self._adopt(channel, on_event)
        try:
            await channel.start([HELPER], self._socket)
        except HelperUnavailable as exc:
            on_event("exec", f"the helper cannot run in this sandbox: {exc}")
            return fallback
        on_event("helper", None)
        return channel

    async def preopen(self, api: Any, container_id: str, user: str) -> HelperChannel | None:
        """A helper channel started ahead of any run (a warm pool's container), telling
        nobody; None when the helper cannot run there (the run then gets docker exec)."""
        reasons: list[str | None] = []
        channel = await self.channel(api, container_id, user,
                                     lambda _kind, why: reasons.append(why))
        return channel if isinstance(channel, HelperChannel) else None

    @staticmethod
    def _adopt(channel: HelperChannel, on_event: Callable[[str, str | None], None]) -> None:
        channel.on_fallback = lambda why: on_event("exec", why)
        channel.on_restart = lambda why: on_event("helper", why)


def _ready(api: Any, container_id: str, size: int) -> bool:
    """Whether the volume holds the whole binary (a filling cut short is done again)."""
    try:
        stream, stat = api.get_archive(container_id, f"{MOUNT}/pyflue-helper")
    except docker.errors.NotFound:
        return False
    stream.close()
    return int(stat.get("size", -1)) == size


def _helper_tar(binary: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("pyflue-helper")
        info.size, info.mode, info.uid, info.gid = len(binary), 0o755, 0, 0
        tar.addfile(info, io.BytesIO(binary))
    return out.getvalue()
