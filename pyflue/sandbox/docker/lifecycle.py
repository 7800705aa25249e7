"""The life of a run's container: create hardened, start, remove whatever happens, reap leaks.

Each run gets its own container and its own tmpfs-backed volume at ``/workspace`` (size-capped,
owned by the sandbox user, usable by the archive API even with a read-only root filesystem).
Both carry labels naming the run, so :meth:`DockerProvider.reap` finds whatever a crash left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import docker.errors
import docker.types

from pyflue._bridge import ThreadBridge, run_to_completion
from pyflue.egress.tls import BUNDLE_PATH
from pyflue.engine_watch import EngineState
from pyflue.errors import EngineUnavailable, ImageNotFound, SandboxError, SandboxStartError
from pyflue.events import ContainerCreated, ContainerExited, ContainerRemoved, ContainerStarted, Log
from pyflue.models import utcnow
from pyflue.sandbox.base import Emit, PoolFill, PutEntry, Sandbox, SandboxSpec
from pyflue.sandbox.docker.box import IMAGE_REQUIREMENTS, DockerSandbox
from pyflue.sandbox.docker.egress import Attachment, EgressConfig, EgressGateway
from pyflue.sandbox.docker.engine import connect, is_gvisor, start_error, translated
from pyflue.sandbox.docker.helper_channel import HelperChannel
from pyflue.sandbox.docker.helper_setup import MOUNT as HELPER_MOUNT
from pyflue.sandbox.docker.helper_setup import HelperSetup, socket_path
from pyflue.sandbox.docker.pool import LABEL_POOL, Pooled, PoolPorts, WarmPool
from pyflue.sandbox.docker.probe import ContainerProbe
from pyflue.sandbox.tario import build_tar

log = logging.getLogger(__name__)

LABEL_RUN = "dev.pyflue.run-id"
LABEL_WORKFLOW = "dev.pyflue.workflow"
LABEL_CREATED = "dev.pyflue.created-at"
# Which run store owns the container: a reaper only touches its own store's containers, so
# projects (and stores) sharing one engine never reap each other's live runs.
LABEL_SCOPE = "dev.pyflue.scope"

# PID 1 of every sandbox: reaps orphans and, on SIGUSR1, kills every process it may signal. It
# needs no fork to do that, so it still works when a fork bomb has used every pid. Where the
# image has python3, the init also makes itself non-dumpable, so the sandbox's own commands
# (same uid) cannot ptrace it or read its memory; otherwise a POSIX sh loop does the same job.
PY_INIT = """
import ctypes, os, signal
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
signal.signal(signal.SIGUSR1, lambda *_: os.kill(-1, signal.SIGKILL))
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
signal.signal(signal.SIGINT, lambda *_: os._exit(0))
signal.signal(signal.SIGCHLD, lambda *_: None)
while True:
    try:
        os.wait()
    except ChildProcessError:
        signal.pause()
"""
# The sh loop waits on one blocking child, so the traps run and orphans are reaped while it waits.
# That child is `sleep`; in an image without `sleep` it blocks instead by reading a pipe it also
# holds open for writing (reopened through /proc), so it never gets data nor an end of file: one
# fork, never a loop of failing forks.
INIT = (
    'if command -v python3 >/dev/null 2>&1; then exec python3 -c "$1"; fi; '
    "trap 'kill -KILL -1 2>/dev/null' USR1; trap 'exit 0' TERM INT; "
    "while :; do : | { sleep 2147483647 2>/dev/null || "
    "{ exec 3>/proc/self/fd/0 && read -r _; }; } & wait $!; done"
)



def _no_shell(message: str) -> bool:
    """Whether the engine refused to start a container because its image has no /bin/sh."""
    return "/bin/sh" in message and ("no such file" in message.lower()
                                      or "not found" in message.lower())


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def resource_name(run_id: str) -> str:
    """A Docker-safe name for a run's container and volume."""
    return "pyflue-" + re.sub(r"[^a-zA-Z0-9_.-]+", "-", run_id.removeprefix("workflow:")).lower()


CONTAINER_LOG = {"max-size": "1m", "max-file": "1"}  # the engine's log of one container


def container_config(spec: SandboxSpec, volume: str, scope: str = "default",
                     pool_owner: str | None = None,
                     helper_volume: str | None = None,
                     egress: Attachment | None = None) -> dict[str, Any]:
    """The hardened ``containers.create`` arguments for a run (see docs/sandbox.md); with
    ``pool_owner``, for a warm pool's container (the same hardening, one more label); with
    ``egress``, on the run's egress network (docs/sandbox.md#egress)."""
    config: dict[str, Any] = {
        "image": spec.image,
        "command": ["/bin/sh", "-c", INIT, "pyflue-init", PY_INIT],
        "entrypoint": [],
        "name": resource_name(spec.run_id),
        "user": spec.user,
        "working_dir": spec.workdir,
        "environment": {"HOME": "/tmp", **spec.env},
        "labels": {
            LABEL_RUN: spec.run_id,
            LABEL_WORKFLOW: spec.workflow,
            LABEL_CREATED: utcnow().isoformat(),
            LABEL_SCOPE: scope,
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": spec.pids,
        "mem_limit": spec.memory,
        "memswap_limit": spec.memory,
        "nano_cpus": int(spec.cpus * 1e9),
        "network_mode": spec.network,
        "read_only": spec.read_only_root,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmp_size},mode=1777"},
        "mounts": [docker.types.Mount(spec.workdir, volume, type="volume")],
        # The container's own output (its init's) is kept by the engine on the host disk:
        # capped, so a command cannot fill that disk through it (pyflue never reads it).
        "log_config": docker.types.LogConfig(type="json-file", config=CONTAINER_LOG),
        "detach": True,
    }
    if pool_owner is not None:
        config["labels"][LABEL_POOL] = pool_owner
    if egress is not None:
        extra = egress.container_config()
        config["environment"] = {**extra.pop("proxy_env"), **config["environment"]}
        config.update(extra)
    if spec.runtime:
        config["runtime"] = spec.runtime
    if helper_volume is not None:  # the channel helper, read-only (see helper_setup.py)
        config["mounts"].append(docker.types.Mount(HELPER_MOUNT, helper_volume, type="volume",
                                                   read_only=True))
    if is_gvisor(spec.runtime):
        # gVisor's own kernel counts the sandbox's processes against RLIMIT_NPROC (only those:
        # it is not the host's per-uid count), so that is where the pids limit holds. The host
        # cgroup limit then only bounds gVisor itself, whose ptrace platform spends about
        # GVISOR_HOST_PIDS_PER_TASK host pids on each sandboxed task.
        config["ulimits"] = [docker.types.Ulimit(name="nproc", soft=spec.pids, hard=spec.pids)]
        config["pids_limit"] = spec.pids * GVISOR_HOST_PIDS_PER_TASK + GVISOR_HOST_PIDS_BASE
    return config


REMOVAL_ATTEMPTS = 3  # a warm container's removal in the background, before the reaper's turn
CLOSE_WAIT_SECONDS = 30.0  # how long closing waits for removals still under way

GVISOR_HOST_PIDS_PER_TASK = 12  # measured about 8 (50 tasks: 451 host pids; 512: 4094), plus room
GVISOR_HOST_PIDS_BASE = 512


def volume_options(spec: SandboxSpec) -> dict[str, str]:
    uid, gid = spec.uid_gid
    return {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": f"size={spec.workspace_size},uid={uid},gid={gid},mode=0755,nosuid,nodev",
    }


class _NameTaken(Exception):
    """The run's container name is in use (by an earlier attempt of the same run)."""


class DockerProvider:
    """Sandboxes as Docker containers on one engine (local socket or ``DOCKER_HOST``)."""

    def __init__(self, base_url: str | None = None, *, scope: str = "default",
                 kill_grace: float = 2.0, bridge: ThreadBridge | None = None,
                 egress: EgressConfig | None = None) -> None:
        self.base_url = base_url
        self.scope = scope
        self.kill_grace = kill_grace
        self.bridge = bridge or ThreadBridge()
        self._owns_bridge = bridge is None
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.helper = HelperSetup(lambda: self.client, self.bridge, base_url)
        self.pool: WarmPool | None = None
        self.pool_owner: str | None = None
        self._removing: dict[str, asyncio.Task[bool]] = {}  # container id: its removal
        # The helper channels opened when pooled containers were made: a claim takes its
        # container's, so a warm run pays no `docker exec` to start the helper.
        self._warm_channels: dict[str, HelperChannel] = {}
        # The egress networks of pooled egress containers (one each, known to no run yet).
        self._warm_egress: dict[str, Attachment] = {}
        self.egress_config = egress or EgressConfig(relay_image="pyflue/sandbox:latest")
        self._gateway: EgressGateway | None = None

    @property
    def gateway(self) -> EgressGateway:
        """The egress relay and proxy, made on the first egress run."""
        if self._gateway is None:
            self._gateway = EgressGateway(
                self.client, self.bridge, config=self.egress_config, scope=self.scope,
                owner=self.pool_owner or f"{socket.gethostname()}:{os.getpid()}",
                local=socket_path(self.base_url) is not None)
        return self._gateway

    # -- the warm pool ----------------------------------------------------------------------

    def enable_pool(self, templates: list[tuple[SandboxSpec, int]], *, owner: str,
                    refill_concurrency: int = 2) -> WarmPool:
        """Keeps ``size`` started containers per template spec for matching runs to claim
        (see :mod:`.pool`); ``owner`` (host:pid:instance) labels them for the reaper. Filling
        starts with :meth:`start_pool`."""
        self.pool_owner = owner
        self.pool = WarmPool(templates, PoolPorts(
            create=self._pooled_create, remove=self._pooled_remove, running=self._running,
        ), refill_concurrency=refill_concurrency)
        return self.pool

    def start_pool(self) -> None:
        if self.pool is not None:
            self.pool.start()

    def pool_fills(self) -> list[PoolFill]:
        """Per pooled image: size, ready, starting (empty when there is no pool)."""
        return self.pool.fills() if self.pool is not None else []

    def pause_pool(self) -> None:
        """The engine went away: stop refilling, drop what is pooled (it may be dead)."""
        if self.pool is not None:
            self.pool.pause()

    def resume_pool(self) -> None:
        """The engine answers again: rebuild the pool in the background."""
        if self.pool is not None:
            self.pool.resume()

    async def on_engine(self, state: EngineState) -> None:
        """Told by the engine watch (``wiring.engine_watch``) of every change: down pauses the
        pool (a daemon restart kills what is pooled), up rebuilds it."""
        if state.up:
            if self._gateway is not None and not await self._gateway.relay_alive():
                # The restart killed the relay: a new one (and new networks) on next use.
                gateway, self._gateway = self._gateway, None
                await gateway.close()
            self.resume_pool()
        else:
            self.pause_pool()

    async def _pooled_create(self, spec: SandboxSpec) -> tuple[str, str]:
        volume = resource_name(spec.run_id)
        await self.helper.prepare(spec.image)
        # An egress template: the container waits on a network of its own, which the proxy
        # serves nothing until a run claims it (its names are registered then).
        egress = await self.gateway.reserve() if spec.egress else None
        container: Any = None
        try:
            container = await self.bridge.call(self._create_once, spec, volume,
                                               self.pool_owner, egress)
            await self.bridge.call(self._start, container, spec)
            # The channel too is opened now, off any run's critical path (env and secrets go
            # with each command, never into the helper or the container).
            channel = await self.helper.preopen(self.client.api, container.id, spec.user)
        except BaseException:
            await run_to_completion(self.bridge.call(
                self._remove_sync, container.id if container is not None else volume, volume))
            if egress is not None:
                await run_to_completion(self.gateway.release(egress))
            raise
        if channel is not None:
            self._warm_channels[container.id] = channel
        if egress is not None:
            self._warm_egress[container.id] = egress
            self.gateway.refill()  # after the start, as for a cold egress run
        return container.id, volume

    async def _pooled_remove(self, cid: str, volume: str) -> None:
        channel = self._warm_channels.pop(cid, None)
        if channel is not None:
            await channel.close()
        await self.bridge.call(self._remove_sync, cid, volume)
        egress = self._warm_egress.pop(cid, None)
        if egress is not None:
            await self.gateway.release(egress)

    async def _running(self, cid: str) -> bool:
        # The engine's inspect, not a round trip through the helper: on a busy machine one
        # call to dockerd beats the relay through dockerd, the shim and the helper (4 ms
        # against 17 ms p50 at a load of 20 on 2 cores; 1 ms against 0.2 ms when idle).
        state = await self.bridge.call(self._state, cid)
        return bool(state.get("Running")) and not state.get("Paused") \
            and not state.get("Restarting") and not state.get("OOMKilled")

    def removal(self, sandbox_id: str) -> asyncio.Task[bool] | None:
        """The background removal of a sandbox's container still under way (a warm
        container's, set off when its run ended), or None when none is."""
        return self._removing.get(sandbox_id)

    async def remove_left(self, sandbox_id: str) -> bool:
        if sandbox_id in self._removing:
            return False  # still being tried (see _remove_soon)

        def _remove() -> bool:
            try:
                with translated("inspecting a container left after its run"):
                    labels = self.client.api.inspect_container(sandbox_id)["Config"]["Labels"]
            except SandboxError as exc:
                return "no such container" in exc.message.lower() or \
                    "no longer exists" in exc.message.lower()
            volume = resource_name((labels or {}).get(LABEL_RUN, sandbox_id))
            return self._remove_sync(sandbox_id, volume)

        return await self.bridge.call(_remove)

    @property
    def client(self) -> Any:
        with self._client_lock:  # first used from pool threads: make exactly one client
            if self._client is None:
                self._client = connect(self.base_url)
            return self._client

    async def ping(self) -> None:
        """Raises EngineUnavailable when the engine does not answer."""
        await self.bridge.call(self._ping)

    def _ping(self) -> None:
        with translated("contacting the Docker engine"):
            self.client.ping()

    async def info(self) -> dict[str, Any]:
        def _info() -> dict[str, Any]:
            with translated("reading Docker engine info"):
                return dict(self.client.info())

        return await self.bridge.call(_info)

    async def image_exists(self, image: str) -> bool:
        def _exists() -> bool:
            try:
                with translated("looking up an image", image=image):
                    self.client.images.get(image)
            except ImageNotFound:
                return False
            return True

        return await self.bridge.call(_exists)

    @contextlib.asynccontextmanager
    async def open(self, spec: SandboxSpec, emit: Emit) -> AsyncIterator[Sandbox]:
        pooled = await self.pool.claim(spec) if self.pool is not None else None
        if pooled is not None:
            async with self._open_warm(pooled, spec, emit) as box:
                yield box
            return
        async with self._open_cold(spec, emit) as box:
            yield box

    @contextlib.asynccontextmanager
    async def _open_warm(self, pooled: Pooled, spec: SandboxSpec,
                         emit: Emit) -> AsyncIterator[Sandbox]:
        """A container claimed from the pool: this run's alone; removed in the background
        when the run ends (``container_removed`` says ``deferred``)."""
        cid = pooled.container_id
        ready = self._warm_channels.pop(cid, None)
        egress = self._warm_egress.pop(cid, None)
        box: DockerSandbox | None = None
        asked = time.monotonic()
        try:
            if egress is not None:  # from now on the proxy serves this network the run's names
                self.gateway.register(egress, spec, emit)
            emit(ContainerCreated(container_id=cid, name=pooled.name, image=spec.image,
                                  network=egress.network if egress else spec.network,
                                  runtime=spec.runtime or "runc"))
            box = await self._sandbox(cid, spec, emit, launch="warm", asked=asked,
                                     volume=pooled.name, ready=ready)
            yield box
        finally:
            if self.pool is not None:
                self.pool.released()
            channel = box.channel if box is not None else ready
            if isinstance(channel, HelperChannel):
                await run_to_completion(channel.close())
            await run_to_completion(self._release(pooled, emit, egress))

    async def _release(self, pooled: Pooled, emit: Emit, egress: Attachment | None) -> None:
        cid = pooled.container_id
        if egress is not None:  # its open connections end (and are recorded) within the run
            await self.gateway.unregister(egress)
        emit(self._exited(cid, await self.bridge.call(self._state, cid)))
        task = asyncio.create_task(self._remove_soon(cid, pooled.name, egress))
        self._removing[cid] = task
        task.add_done_callback(lambda _: self._removing.pop(cid, None))
        emit(ContainerRemoved(container_id=cid, removed=True, deferred=True))

    async def _remove_soon(self, cid: str, volume: str, egress: Attachment | None = None) -> bool:
        if self.pool is not None:  # the warm runs under way first (bounded: see pool.quiet)
            await self.pool.quiet()
        for attempt in range(REMOVAL_ATTEMPTS):
            if await self.bridge.call(self._remove_sync, cid, volume):
                if egress is not None:
                    await self.gateway.release(egress)
                return True
            await asyncio.sleep(1.0 + attempt)
        # Left for the reaper, which removes it once this worker is gone.
        log.error("could not remove container %s after its run", cid[:12])
        return False

    @contextlib.asynccontextmanager
    async def _open_cold(self, spec: SandboxSpec, emit: Emit) -> AsyncIterator[Sandbox]:
        volume = resource_name(spec.run_id)
        container: Any = None
        box: DockerSandbox | None = None
        asked = time.monotonic()
        egress: Attachment | None = None
        try:
            await self.helper.prepare(spec.image)
            if spec.egress:
                egress = await run_to_completion(self.gateway.attach(spec, emit))
            # Creation runs to its end even when the run is cancelled meanwhile, so the
            # cleanup below always knows what exists and removes it.
            container = await run_to_completion(self.bridge.call(self._create, spec, volume,
                                                                 egress))
            emit(ContainerCreated(container_id=container.id, name=volume, image=spec.image,
                                  network=egress.network if egress else spec.network,
                                  runtime=spec.runtime or "runc", create_ms=_ms_since(asked)))
            await self.bridge.call(self._start, container, spec)
            if egress is not None:
                self.gateway.refill()
                if egress.ca_bundle is not None:  # (the tmpfs volume exists once started)
                    await self.bridge.call(self._put_ca, container, spec, egress.ca_bundle)
            box = await self._sandbox(container.id, spec, emit, launch="cold", asked=asked,
                                     volume=volume)
            yield box
        finally:
            if box is not None and isinstance(box.channel, HelperChannel):
                await run_to_completion(box.channel.close())
            await run_to_completion(self._remove(container, volume, emit))
            if egress is not None:
                await run_to_completion(self.gateway.detach(egress))

    async def _sandbox(self, container_id: str, spec: SandboxSpec, emit: Emit, *,
                       launch: Literal["warm", "cold"], asked: float, volume: str,
                       ready: HelperChannel | None = None) -> DockerSandbox:
        """The work inside a started container, over its channel (helper or docker exec;
        ``ready``: the one opened when it was pooled); emits ``container_started`` saying
        which, and a warning should the helper be started again or fall back later."""
        api = self.client.api
        said: list[bool] = []

        def told(channel: str, reason: str | None) -> None:
            if not said:
                said.append(True)
                emit(ContainerStarted(container_id=container_id, launch=launch,
                                      channel=channel, channel_reason=reason,
                                      start_ms=_ms_since(asked)))
            elif channel == "helper":
                emit(Log(level="warn", message=f"sandbox channel: {reason}",
                         fields={"channel": channel}))
            else:
                emit(Log(level="warn", message=f"sandbox channel: falling back to docker exec: "
                                               f"{reason}", fields={"channel": channel}))

        channel = await self.helper.channel(api, container_id, spec.user, told, ready)
        if isinstance(channel, HelperChannel):
            channel.bulk_under = spec.workdir  # a volume: the engine sees it as we do
        return DockerSandbox(channel, ContainerProbe(api, self.bridge, container_id),
                             self.bridge, spec, self.kill_grace,
                             volume=volume)

    def _create(self, spec: SandboxSpec, volume: str, egress: Attachment | None = None) -> Any:
        try:
            return self._create_once(spec, volume, egress=egress)
        except _NameTaken:
            pass
        # The name is taken: by a container of an earlier attempt of this very run (its
        # worker was lost, and the run went back to the queue). This attempt starts afresh.
        log.warning("removing the container of an earlier attempt of %s", spec.run_id)
        self._remove_sync(volume, volume)
        return self._create_once(spec, volume, egress=egress)

    def _create_once(self, spec: SandboxSpec, volume: str, pool_owner: str | None = None,
                     egress: Attachment | None = None) -> Any:
        labels = {LABEL_RUN: spec.run_id, LABEL_WORKFLOW: spec.workflow, LABEL_SCOPE: self.scope}
        if pool_owner is not None:
            labels[LABEL_POOL] = pool_owner
        try:
            with translated("creating the run's workspace volume"):
                self.client.volumes.create(
                    volume, driver="local", driver_opts=volume_options(spec), labels=labels
                )
            with translated("creating the run's container", image=spec.image):
                try:
                    return self.client.containers.create(
                        **container_config(spec, volume, self.scope, pool_owner,
                                           self.helper.volume, egress)
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code == 409 and "already in use" in str(exc):
                        raise _NameTaken(spec.run_id) from exc
                    raise
        # An engine that does not answer is said as such (the scheduler's engine watch reads it
        # from the run's end), not as a start error.
        except (ImageNotFound, EngineUnavailable):
            raise
        except SandboxError as exc:
            raise start_error(f"cannot create a container from {spec.image}", exc) from exc

    def _put_ca(self, container: Any, spec: SandboxSpec, bundle: bytes) -> None:
        """The bundle the run trusts for intercepted HTTPS (its own CA and the host's), into
        the run's volume before its first command (see pyflue/egress/tls.py)."""
        uid, gid = spec.uid_gid
        folder, name = BUNDLE_PATH.removeprefix(spec.workdir + "/").split("/")
        tar = build_tar([PutEntry(folder, None, 0o755), PutEntry(f"{folder}/{name}", bundle,
                                                                0o444)], uid=uid, gid=gid)
        with translated("copying the egress CA into the run's volume", container=container.id):
            container.put_archive(spec.workdir, tar)

    def _start(self, container: Any, spec: SandboxSpec) -> None:
        try:
            with translated("starting the run's container", container=container.id):
                container.start()
        except EngineUnavailable:
            raise
        except SandboxError as exc:
            if _no_shell(exc.message):
                raise SandboxStartError(
                    f"the image {spec.image} has no /bin/sh, which the sandbox needs to start: "
                    f"use an image with a POSIX shell at /bin/sh (see {IMAGE_REQUIREMENTS})",
                    details=exc.details,
                ) from exc
            raise start_error(f"cannot start a container from {spec.image}", exc) from exc

    async def _remove(self, container: Any, volume: str, emit: Emit) -> None:
        if container is not None:
            emit(self._exited(container.id, await self.bridge.call(self._state, container.id)))
        # Without a container object (creation failed or was cut short) remove by name.
        removed = await self.bridge.call(self._remove_sync, container.id if container else volume,
                                         volume)
        if container is not None:
            emit(ContainerRemoved(container_id=container.id, removed=removed))

    @staticmethod
    def _exited(cid: str, state: dict[str, Any]) -> ContainerExited:
        return ContainerExited(
            container_id=cid,
            exit_code=state.get("ExitCode") if not state.get("Running") else 137,
            oom_killed=bool(state.get("OOMKilled")),
            stopped_by="pyflue" if state.get("Running") else "itself",
        )

    def _state(self, cid: str) -> dict[str, Any]:
        try:
            with translated("inspecting the run's container"):
                return dict(self.client.api.inspect_container(cid).get("State", {}))
        except SandboxError:
            return {}

    def _remove_sync(self, cid: str | None, volume: str) -> bool:
        ok = True
        if cid is not None:
            try:
                with translated("removing the run's container"):
                    self.client.api.remove_container(cid, force=True, v=True)
            except SandboxError as exc:
                ok = "no such container" in exc.message.lower()
                if not ok:
                    log.warning("could not remove container %s: %s", cid[:12], exc)
        try:
            with translated("removing the run's workspace volume"):
                self.client.api.remove_volume(volume, force=True)
        except SandboxError as exc:
            if "no such volume" not in exc.message.lower():
                log.warning("could not remove volume %s: %s", volume, exc)
        return ok

    async def reap(self, is_live: Callable[[str], Awaitable[bool]],
                   owner_is_dead: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        """Removes this scope's containers and volumes whose run is not live; with
        ``owner_is_dead``, also the warm-pool containers (pooled or claimed) of workers that
        are gone. A live worker's pool is never touched: it removes its own."""
        found = await self.bridge.call(self._labelled)
        reaped = []
        for run_id, cid, volume in found:
            if await is_live(run_id):
                continue
            await self.bridge.call(self._remove_sync, cid, volume)
            reaped.append(run_id)
        if owner_is_dead is not None:
            for owner, pool_id, cid, volume in await self.bridge.call(self._pool_labelled):
                if owner != self.pool_owner and await owner_is_dead(owner):
                    await self.bridge.call(self._remove_sync, cid, volume)
                    reaped.append(pool_id)
            # Egress relays and networks of dead workers (a live one removes its own).
            for owner, kind, rid in await self.bridge.call(self.gateway.others):
                if await owner_is_dead(owner):
                    await self.bridge.call(self.gateway.remove, kind, rid)
        return sorted(set(reaped))

    def _labelled(self) -> list[tuple[str, str | None, str]]:
        with translated("listing pyflue containers"):
            mine = {"label": [LABEL_RUN, f"{LABEL_SCOPE}={self.scope}"]}
            containers = self.client.api.containers(all=True, filters=mine)
            volumes = self.client.api.volumes(filters=mine).get("Volumes") or []
        found: dict[str, tuple[str, str | None, str]] = {}
        for c in containers:
            if LABEL_POOL in c["Labels"]:  # a warm pool's: see _pool_labelled
                continue
            run_id = c["Labels"][LABEL_RUN]
            found[run_id] = (run_id, c["Id"], resource_name(run_id))
        for v in volumes:
            labels = v.get("Labels") or {}
            run_id = labels.get(LABEL_RUN)
            if run_id and run_id not in found and LABEL_POOL not in labels:
                found[run_id] = (run_id, None, v["Name"])
        return list(found.values())

    async def pooled_running(self) -> dict[str, int]:
        """Running warm-pool containers of this scope on the engine, per image (whatever
        worker owns them, ready or claimed)."""
        def _count() -> dict[str, int]:
            with translated("listing pyflue's pooled containers"):
                mine = {"label": [LABEL_POOL, f"{LABEL_SCOPE}={self.scope}"]}
                found = self.client.api.containers(filters=mine)
            counts: dict[str, int] = {}
            for c in found:
                counts[c["Image"]] = counts.get(c["Image"], 0) + 1
            return counts

        return await self.bridge.call(_count)

    def _pool_labelled(self) -> list[tuple[str, str, str | None, str]]:
        """(owner, placeholder id, container id, volume) of this scope's warm-pool resources."""
        with translated("listing pyflue's pooled containers"):
            mine = {"label": [LABEL_POOL, f"{LABEL_SCOPE}={self.scope}"]}
            containers = self.client.api.containers(all=True, filters=mine)
            volumes = self.client.api.volumes(filters=mine).get("Volumes") or []
        found: dict[str, tuple[str, str, str | None, str]] = {}
        for c in containers:
            labels = c["Labels"]
            pool_id = labels.get(LABEL_RUN, "")
            found[pool_id] = (labels[LABEL_POOL], pool_id, c["Id"], resource_name(pool_id))
        for v in volumes:
            labels = v.get("Labels") or {}
            pool_id = labels.get(LABEL_RUN, "")
            if pool_id not in found:
                found[pool_id] = (labels[LABEL_POOL], pool_id, None, v["Name"])
        return list(found.values())

    async def close(self) -> None:
        """Drains the pool and waits (briefly) for removals still under way."""
        if self.pool is not None:
            await self.pool.drain()
        if self._removing:
            await asyncio.wait(list(self._removing.values()), timeout=CLOSE_WAIT_SECONDS)
        if self._gateway is not None:
            await self._gateway.close()
            self._gateway = None
        if self._client is not None:
            await self.bridge.call(self._client.close)
            self._client = None
        if self._owns_bridge:
            self.bridge.shutdown()
