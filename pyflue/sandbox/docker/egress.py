"""Egress plumbing on Docker: each egress run's own internal network, and one relay per worker.

A run with ``egress`` gets a network of its own, created ``internal`` (no route out) and with
no address on the host's side of the bridge (``inhibit_ipv4``), so the host is not reachable
from it either. Only two containers are on it: the run's and this worker's relay. The relay is
a hardened container of a few lines of Python: it listens on port 3128 of every run network it
is attached to and hands each accepted connection, as a file descriptor over a unix socket
mounted from the host, to the :class:`~pyflue.egress.proxy.EgressProxy` in the pyflue process.
The proxy thus reads the container's socket directly (one hop, no copy in the relay) and knows
the run by the peer address. The container's resolver is pointed at the relay (which answers
no DNS) and IPv6 is off in it: names are resolved by the proxy only. See docs/sandbox.md#egress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.types

from pyflue._bridge import ThreadBridge
from pyflue.egress.proxy import EgressProxy, HostsFile, RunEgress, receive
from pyflue.egress.rules import Network, parse_networks, parse_rules
from pyflue.egress.tls import BUNDLE_PATH, TRUST_ENV, RunCA
from pyflue.errors import SandboxError, SandboxStartError
from pyflue.sandbox.base import Emit, SandboxSpec
from pyflue.sandbox.docker.engine import translated

log = logging.getLogger(__name__)

PORT = 3128
LABEL_EGRESS = "dev.pyflue.egress"  # "relay", "relay-network" or "run-network"
LABEL_OWNER = "dev.pyflue.egress-owner"
READY_TIMEOUT = 15.0
# Networks made ahead (the relay already attached), so a run's start does not wait for
# Docker's network create and connect (about 100-400 ms here). Each serves one run only.
SPARE_NETWORKS = 2
_INHIBIT = {"com.docker.network.bridge.inhibit_ipv4": "true"}
_NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1"}

# The relay: accept on every attached network, pass the socket to pyflue, forget it.
RELAY = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1024)
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.connect("/egress/relay.sock")
u.send(b"ready")
while True:
    c, _ = s.accept()
    try:
        socket.send_fds(u, [b"c"], [c.fileno()])
    except OSError:
        pass
    c.close()
"""


@dataclass(frozen=True)
class EgressConfig:
    """What the server allows the proxy (from :class:`pyflue.settings.SandboxDefaults`)."""

    relay_image: str
    allow_networks: tuple[str, ...] = ()
    hosts_file: Path | None = None
    ca_file: Path | None = None  # more CAs to trust for intercepted HTTPS (tests, mirrors)


@dataclass(frozen=True)
class Attachment:
    """A run's egress network: what its container is created with."""

    network: str
    network_id: str
    subnet: Network
    proxy_ip: str
    ca_bundle: bytes | None = None  # with egress secrets: what the container trusts

    def container_config(self) -> dict[str, Any]:
        proxy = f"http://{self.proxy_ip}:{PORT}"
        trust = dict.fromkeys(TRUST_ENV, BUNDLE_PATH) if self.ca_bundle else {}
        return {
            "network_mode": self.network,
            "dns": [self.proxy_ip],  # answers no DNS: names are the proxy's to resolve
            "dns_opt": ["timeout:1", "attempts:1"],  # so a tool that tries fails fast
            "sysctls": dict(_NO_IPV6),
            "proxy_env": {
                "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy,
                "https_proxy": proxy, "NO_PROXY": "localhost,127.0.0.1",
                "no_proxy": "localhost,127.0.0.1", **trust,
            },
        }


class EgressGateway:
    """The relay, its unix socket and the proxy of one :class:`DockerProvider`; started on
    the first egress run, removed by :meth:`close`."""

    def __init__(self, client: Any, bridge: ThreadBridge, *, config: EgressConfig,
                 scope: str, owner: str, local: bool) -> None:
        self._client = client
        self.bridge = bridge
        self.config = config
        self.scope = scope
        self.owner = owner
        self.local = local
        self.proxy = EgressProxy(
            allow=parse_networks(config.allow_networks,
                                 where="PYFLUE_SANDBOX_EGRESS_ALLOW_NETWORKS"),
            hosts=HostsFile(config.hosts_file), upstream_ca=config.ca_file)
        self._lock = asyncio.Lock()
        self._spare: list[Attachment] = []
        self._filling: asyncio.Task[None] | None = None
        self.spare_size = SPARE_NETWORKS
        self.made_inline = 0  # runs that found no spare network and waited for one
        self._relay_id: str | None = None
        self._home: str | None = None
        self._dir: Path | None = None
        self._sock: socket.socket | None = None

    async def attach(self, spec: SandboxSpec, emit: Emit) -> Attachment:
        """The run's own network (a spare one, or made now) with the relay on it; the run
        registered with the proxy. Call :meth:`refill` once the run's container started."""
        return self.register(await self.reserve(), spec, emit)

    async def reserve(self) -> Attachment:
        """A network of its own with the relay on it (a spare one, or made now), known to no
        run yet: the proxy refuses every connection from it until :meth:`register`. Give it
        back with :meth:`release` if it never gets a run (a warm pool's container)."""
        await self._ensure()
        if self._spare:
            return self._spare.pop(0)
        self.made_inline += 1
        return await self.bridge.call(self._network)

    async def release(self, attachment: Attachment) -> None:
        """Removes a network :meth:`reserve` gave that no run was registered on."""
        await self.bridge.call(self.remove_network, attachment.network_id)

    def register(self, attachment: Attachment, spec: SandboxSpec, emit: Emit) -> Attachment:
        """Gives the proxy the run's names (and secrets) for connections from ``attachment``'s
        network; what the container must be made with (the CA bundle, with secrets)."""
        ca = RunCA(spec.run_id) if spec.egress_secrets else None
        self.proxy.add(attachment.subnet, RunEgress(
            run_id=spec.run_id, rules=parse_rules(spec.egress, where="egress"),
            secrets=spec.egress_secrets, emit=emit, ca=ca))
        if ca is None:
            return attachment
        return dataclasses.replace(attachment, ca_bundle=ca.bundle())

    async def detach(self, attachment: Attachment) -> None:
        """Ends the run's open connections (their events recorded), removes its network."""
        await self.unregister(attachment)
        await self.release(attachment)

    async def unregister(self, attachment: Attachment) -> None:
        """Ends the run's open connections (their events recorded); from now on the proxy
        refuses every connection from its network."""
        await self.proxy.remove(attachment.subnet)

    @property
    def spares(self) -> int:
        """Networks made ahead, ready for the next egress runs."""
        return len(self._spare)

    def refill(self) -> None:
        """Makes spare networks up to ``spare_size`` in the background. Called after a run's
        container started, not before: the engine serializes network changes, so a refill
        under way would hold up that container's own network attach."""
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        try:
            while self._relay_id is not None and len(self._spare) < self.spare_size:
                self._spare.append(await self.bridge.call(self._network))
        except Exception as exc:  # runs make their own network meanwhile
            log.warning("could not make a spare egress network: %s", exc)

    async def _ensure(self) -> None:
        async with self._lock:
            if self._relay_id is not None:
                return
            if not self.local:
                raise SandboxStartError(
                    "egress needs the Docker engine on this machine (a unix socket): the relay "
                    "hands connections to pyflue over a socket mounted from the host",
                    hint="run pyflue beside its engine for egress runs (docs/sandbox.md#egress)")
            loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            self._dir = Path(tempfile.mkdtemp(prefix="pyflue-egress-"))
            self._dir.chmod(0o711)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self._dir / "relay.sock"))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                os.chown(self._dir / "relay.sock", 1000, 1000)
            (self._dir / "relay.sock").chmod(0o600 if os.geteuid() == 0 else 0o666)
            self._sock = sock
            loop.add_reader(sock.fileno(), receive(sock, self.proxy, ready.set))
            try:
                self._relay_id = await self.bridge.call(self._start_relay)
                await asyncio.wait_for(ready.wait(), READY_TIMEOUT)
            except BaseException:
                await self._teardown()
                raise

    def _labels(self, kind: str) -> dict[str, str]:
        return {LABEL_EGRESS: kind, LABEL_OWNER: self.owner, "dev.pyflue.scope": self.scope}

    def _start_relay(self) -> str:
        token = secrets.token_hex(4)
        image = self.config.relay_image
        try:
            with translated("creating the egress relay", image=image):
                self._home = self._client.api.create_network(
                    f"pyflue-egress-{token}", driver="bridge", internal=True, options=_INHIBIT,
                    labels=self._labels("relay-network"))["Id"]
                container = self._client.containers.create(
                    image=image, command=["python3", "-c", RELAY], entrypoint=[],
                    name=f"pyflue-egress-relay-{token}", user="1000:1000",
                    labels=self._labels("relay"), cap_drop=["ALL"],
                    security_opt=["no-new-privileges"], read_only=True, mem_limit="64m",
                    pids_limit=16, network=f"pyflue-egress-{token}",
                    sysctls={"net.ipv4.ip_forward": "0", **_NO_IPV6},
                    mounts=[docker.types.Mount("/egress", str(self._dir), type="bind")],
                    detach=True)
                container.start()
        except SandboxError as exc:
            raise SandboxStartError(
                f"cannot start the egress relay from {image} (it needs python3): "
                f"{exc.message}",
                hint="set PYFLUE_SANDBOX_EGRESS_RELAY_IMAGE to an image with python3, or "
                     "build the default one with `pyflue images build`") from exc
        return str(container.id)

    def _network(self) -> Attachment:
        name = f"pyflue-egress-net-{secrets.token_hex(6)}"
        with translated("creating the run's egress network"):
            net_id = self._client.api.create_network(
                name, driver="bridge", internal=True, options=_INHIBIT,
                labels=self._labels("run-network"))["Id"]
        try:
            with translated("attaching the egress relay to the run's network"):
                self._client.api.connect_container_to_network(self._relay_id, net_id)
                info = self._client.api.inspect_network(net_id)
            subnet = ipaddress.ip_network(info["IPAM"]["Config"][0]["Subnet"])
            relay = info["Containers"][self._relay_id]["IPv4Address"].split("/")[0]
        except BaseException:
            self.remove_network(net_id)
            raise
        return Attachment(network=name, network_id=net_id, subnet=subnet, proxy_ip=relay)

    def remove_network(self, net_id: str) -> None:
        """Disconnects whatever is attached (the relay) and removes the network."""
        try:
            with translated("removing the run's egress network"):
                info = self._client.api.inspect_network(net_id)
                for cid in info.get("Containers") or {}:
                    with contextlib.suppress(SandboxError), translated("detaching"):
                        self._client.api.disconnect_container_from_network(cid, net_id,
                                                                           force=True)
                self._client.api.remove_network(net_id)
        except SandboxError as exc:
            if "not found" not in exc.message.lower():
                log.warning("could not remove network %s: %s", net_id[:12], exc)

    async def close(self) -> None:
        await self._teardown()

    async def relay_alive(self) -> bool:
        """Whether the relay (if started) still runs: a daemon restart kills it, and then
        every egress network this gateway made is useless (see ``DockerProvider.on_engine``)."""
        relay = self._relay_id
        if relay is None:
            return True

        def _running() -> bool:
            try:
                with translated("inspecting the egress relay"):
                    state = self._client.api.inspect_container(relay).get("State", {})
            except SandboxError:
                return False
            return bool(state.get("Running"))

        return await self.bridge.call(_running)

    async def _teardown(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        spare, self._spare = self._spare, []
        for attachment in spare:
            await self.bridge.call(self.remove_network, attachment.network_id)
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        relay, home = self._relay_id, self._home
        self._relay_id = self._home = None
        await self.bridge.call(self._remove_relay, relay, home)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def others(self) -> list[tuple[str, str, str]]:
        """(owner, kind, id) of the egress relays and networks of other gateways in this
        scope, for the reaper to remove those whose owner is dead."""
        mine = {"label": [LABEL_EGRESS, f"dev.pyflue.scope={self.scope}"]}
        with translated("listing egress relays and networks"):
            relays = self._client.api.containers(all=True, filters=mine)
            networks = self._client.api.networks(filters=mine)
        found = [(c["Labels"].get(LABEL_OWNER, ""), "relay", c["Id"]) for c in relays]
        found += [((n.get("Labels") or {}).get(LABEL_OWNER, ""), "network", n["Id"])
                  for n in networks]
        return [item for item in found if item[0] and item[0] != self.owner]

    def remove(self, kind: str, rid: str) -> None:
        if kind == "network":
            self.remove_network(rid)
            return
        with contextlib.suppress(SandboxError), translated("removing an egress relay"):
            self._client.api.remove_container(rid, force=True)

    def _remove_relay(self, relay: str | None, home: str | None) -> None:
        if relay is not None:
            with contextlib.suppress(SandboxError), translated("removing the egress relay"):
                self._client.api.remove_container(relay, force=True)
        if home is not None:
            self.remove_network(home)
