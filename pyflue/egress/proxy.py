"""The egress proxy: HTTP (absolute URI) and HTTPS (CONNECT) for runs with an allow-list.

It runs in the pyflue process. Connections from a run's container reach it already accepted
(the relay on the run's network hands over each socket, see
:mod:`pyflue.sandbox.docker.egress`); the peer address names the run. For every attempt, in
this order and before any connection leaves: the host name must match the run's list and the
port be 80 or 443; the proxy resolves the name itself (a hosts file first, then the system
resolver) and connects only to an address that is public or in the networks the server allows,
never to a run network; for CONNECT the TLS ClientHello's SNI must be the CONNECT host, and for
plain HTTP the Host header the URL's host. A refusal is a 403 whose body names the run's list.
Each attempt is one ``egress`` run event. Egress secrets (placeholders in the container) are
swapped for their values in the request headers sent to their hosts only: plain HTTP as it
passes, HTTPS by ending the sandbox's TLS with the run's own CA (:mod:`pyflue.egress.tls`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pyflue.egress.pump import pump
from pyflue.egress.rules import PORTS, Address, Network, Rule, address_refusal, allowed
from pyflue.egress.tls import RunCA, client_context
from pyflue.events import Egress
from pyflue.sandbox.base import EgressSecret, Emit

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 << 10  # bytes of request line and headers
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
CHUNK = 256 << 10
_HOP = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}


class Denied(Exception):
    """An attempt refused before any connection: ``reason`` goes to the event and the 403."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class RunEgress:
    """One run's egress: its allow-list, its egress secrets, where its events go."""

    run_id: str
    rules: tuple[Rule, ...]
    secrets: tuple[EgressSecret, ...]
    emit: Emit
    ca: RunCA | None = None  # with egress secrets: HTTPS to their hosts is intercepted
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def secrets_for(self, host: str) -> list[EgressSecret]:
        return [s for s in self.secrets if host in s.hosts]


class HostsFile:
    """``ADDRESS NAME...`` lines (``/etc/hosts`` format), read again when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: float | None = None
        self._names: dict[str, list[str]] = {}

    def lookup(self, name: str) -> list[str] | None:
        if self.path is None:
            return None
        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            return None
        if stamp != self._stamp:
            self._names, self._stamp = self._read(self.path), stamp
        return self._names.get(name)

    @staticmethod
    def _read(path: Path) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            for name in words[1:]:
                names.setdefault(name.lower().rstrip("."), []).append(words[0])
        return names


class EgressProxy:
    """The proxy of every egress run of one worker, keyed by the run's network."""

    def __init__(self, *, allow: Sequence[Network] = (), hosts: HostsFile | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 upstream_ca: Path | None = None) -> None:
        self.allow = tuple(allow)
        self.upstream_ca = upstream_ca
        self._upstream_tls: ssl.SSLContext | None = None
        self.hosts = hosts or HostsFile(None)
        self.connect_timeout = connect_timeout
        self._runs: dict[Network, RunEgress] = {}

    @property
    def upstream_tls(self) -> ssl.SSLContext:
        """TLS to the real hosts of intercepted requests (made on first use)."""
        if self._upstream_tls is None:
            self._upstream_tls = client_context(self.upstream_ca)
        return self._upstream_tls

    def add(self, subnet: Network, run: RunEgress) -> None:
        self._runs[subnet] = run

    async def remove(self, subnet: Network) -> None:
        """Forgets a run's network, ending its open connections (each records its event)."""
        run = self._runs.pop(subnet, None)
        if run is None:
            return
        for task in list(run.tasks):
            task.cancel()
        if run.tasks:
            await asyncio.wait(list(run.tasks), timeout=5.0)

    def run_for(self, peer: str) -> RunEgress | None:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return None
        for subnet, run in self._runs.items():
            if address in subnet:
                return run
        return None

    def accept(self, sock: socket.socket) -> None:
        """Takes over one connection from a run's container (closed when it is nobody's)."""
        try:
            peer = sock.getpeername()[0]
        except OSError:
            sock.close()
            return
        run = self.run_for(peer)
        if run is None:
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(run, sock))
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)

    async def _serve(self, run: RunEgress, sock: socket.socket) -> None:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=HEAD_LIMIT)
        attempt = _Attempt(self, run, reader, writer, sock)
        try:
            await attempt.serve()
        except Exception:
            log.exception("egress proxy: connection of %s failed", run.run_id)
            attempt.reason = attempt.reason or "proxy error"
        finally:
            attempt.record()
            attempt.writer.close()

    async def resolve(self, host: str, port: int) -> Address:
        """The first address of ``host`` the proxy may connect to; Denied otherwise."""
        never = tuple(self._runs)
        mapped = self.hosts.lookup(host)
        if mapped is not None:
            candidates = mapped
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise Denied("does not resolve", f"{host} does not resolve") from None
            candidates = [str(info[4][0]) for info in infos]
        refusal = "no address"
        for text in candidates:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            why = address_refusal(address, self.allow, never)
            if why is None:
                return address
            refusal = f"{why} address"
        raise Denied(refusal, f"{host} resolves only to refused addresses ({refusal}: "
                              "loopback, link-local, private and carrier-grade NAT addresses "
                              "are refused unless PYFLUE_SANDBOX_EGRESS_ALLOW_NETWORKS holds "
                              "them)")


class _Attempt:
    """One connection from the sandbox: its request, decision, relay and event."""

    def __init__(self, proxy: EgressProxy, run: RunEgress, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, sock: socket.socket) -> None:
        self.proxy, self.run, self.reader, self.writer = proxy, run, reader, writer
        self.sock = sock
        self.started = time.monotonic()
        self.host, self.port, self.method = "", 0, ""
        self.decision: str = "denied"
        self.reason: str | None = None
        self.address: str | None = None
        self.up = self.down = 0
        self.swapped: list[str] = []

    async def serve(self) -> None:
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            self.reason = "no request"
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self.reason = "bad request"
            await self._refuse(400, "bad request", "the request line is not METHOD TARGET "
                                                   "VERSION")
            return
        self.method, target, version = parts
        headers = [tuple(h.split(":", 1)) for h in lines[1:] if ":" in h]
        try:
            if self.method == "CONNECT":
                await self._connect(target)
            else:
                await self._plain(target, version, [(k, v.strip()) for k, v in headers])
        except Denied as exc:
            self.decision, self.reason = "denied", exc.reason
            await self._refuse(403, exc.reason, exc.detail)

    async def _connect(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host = host.strip("[]").lower().rstrip(".")
        self.port = int(port) if port.isdigit() else 0
        self._check()
        if self.port != 443:
            raise Denied("port", "CONNECT carries HTTPS on port 443 only; use plain http:// "
                                 "for port 80")
        address = await self.proxy.resolve(self.host, self.port)
        if self.run.secrets_for(self.host) and self.run.ca is not None:
            await self._intercept(address, self.run.ca)
            return
        self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        hello = await _client_hello(self.reader)
        sni = _sni(hello) if hello else None
        if hello is None or sni != self.host:
            # Domain fronting: a tunnel to an allowed name carrying TLS for another.
            self.decision = "denied"
            self.reason = "sni mismatch" if sni else "no tls sni"
            return
        await self._relay(address, hello)

    async def _intercept(self, address: Address, ca: RunCA) -> None:
        """HTTPS to a host with egress secrets: TLS ended here with the run's CA (the SNI
        must be the host), one request read, its placeholders swapped, sent over the proxy's
        own TLS to the host, verified as usual."""
        self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self.writer.drain()
        try:
            await asyncio.wait_for(self._start_tls(ca.server_context(self.host)),
                                   HEAD_TIMEOUT)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            self.reason = f"tls refused: {exc.__class__.__name__} (is the SNI the CONNECT host?)"
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = [(k, v.strip()) for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)]
        named = [v for k, v in headers if k.lower() == "host"]
        if len(parts) != 3 or not parts[1].startswith("/") or len(named) != 1 \
                or _host_of(named[0]) != self.host:
            self.reason = "host mismatch"
            await self._refuse(403, "host mismatch", "the Host header must name the "
                                                     "CONNECT host")
            return
        self.method = parts[0]
        first = self._rewrite(f"{parts[0]} {parts[1]} {parts[2]}", headers)
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(
                str(address), self.port, ssl=self.proxy.upstream_tls,
                server_hostname=self.host), self.proxy.connect_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.decision, self.address = "allowed", str(address)
            self.reason = f"connect failed: {exc.__class__.__name__}"
            await self._refuse(502, self.reason, f"could not connect to {self.host}")
            return
        self.decision, self.address = "allowed", str(address)
        up_w.write(first)
        self.up += len(first)
        try:
            await asyncio.gather(self._copy(self.reader, up_w, "up"),
                                 self._copy(up_r, self.writer, "down"))
        finally:
            up_w.close()

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """TLS as the server on the sandbox's connection (StreamWriter.start_tls is client
        side only): the reader then gets, and a new writer sends, plaintext."""
        loop = asyncio.get_running_loop()
        protocol = self.writer.transport.get_protocol()
        secure = await loop.start_tls(self.writer.transport, protocol, context, server_side=True)
        if secure is None:
            raise ConnectionError("the connection closed during the TLS handshake")
        self.writer = asyncio.StreamWriter(secure, protocol, self.reader, loop)

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    way: str) -> None:
        try:
            while data := await src.read(CHUNK):
                dst.write(data)
                if way == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
        except (ConnectionError, OSError):
            dst.close()

    def _rewrite(self, request_line: str, headers: list[tuple[str, str]]) -> bytes:
        """The request head to send: hop-by-hop headers dropped, the host's secrets swapped
        in, ``Connection: close`` (one connection carries one checked request)."""
        secrets = self.run.secrets_for(self.host)
        lines = [request_line]
        for key, value in headers:
            if key.strip().lower() in _HOP:
                continue
            for secret in secrets:
                value, hit = _swap(value, secret)
                if hit and secret.name not in self.swapped:
                    self.swapped.append(secret.name)
            lines.append(f"{key}: {value}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _plain(self, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        url = urlsplit(target)
        self.host = (url.hostname or "").lower().rstrip(".")
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "http" or not self.host or (url.netloc.rpartition(":")[2].isdigit()
                                                     and port is None):
            raise Denied("not a proxy request", "send absolute http:// URLs to this proxy (it "
                                                "is the HTTP_PROXY), or CONNECT for https")
        self.port = port or 80
        self._check()
        named = [v for k, v in headers if k.lower() == "host"]
        if len(named) != 1 or _host_of(named[0]) != self.host:
            raise Denied("host mismatch", "the Host header must name the URL's host")
        address = await self.proxy.resolve(self.host, self.port)
        path = f"{url.path or '/'}{'?' + url.query if url.query else ''}"
        await self._relay(address, self._rewrite(f"{self.method} {path} {version}", headers))

    def _check(self) -> None:
        if not allowed(self.run.rules, self.host, self.port):
            why = "port" if self.port not in PORTS else "not in the allow-list"
            raise Denied(why, f"{self.host}:{self.port} is not in this run's egress allow-list")

    async def _relay(self, address: Address, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                                 socket.SOCK_STREAM)
        upstream.setblocking(False)
        self.address = str(address)
        try:
            await asyncio.wait_for(loop.sock_connect(upstream, (str(address), self.port)),
                                   self.proxy.connect_timeout)
        except (OSError, TimeoutError) as exc:
            upstream.close()
            self.decision, self.reason = "allowed", f"connect failed: {exc.__class__.__name__}"
            if self.method != "CONNECT":
                await self._refuse(502, self.reason, f"could not connect to {self.host}")
            return
        self.decision = "allowed"
        try:
            await loop.sock_sendall(upstream, first)
            self.up += len(first)
            # What the proxy said (the 200) goes out before the answer the pump sends.
            while self.writer.transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
            await asyncio.gather(self._up(upstream), self._down(upstream))
        finally:
            upstream.close()

    async def _up(self, upstream: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(CHUNK):
                await loop.sock_sendall(upstream, data)
                self.up += len(data)
            upstream.shutdown(socket.SHUT_WR)
        except (ConnectionError, OSError):
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)

    async def _down(self, upstream: socket.socket) -> None:
        self.down += await pump(upstream, self.sock)

    async def _refuse(self, status: int, reason: str, detail: str) -> None:
        names = ", ".join(r.pattern for r in self.run.rules) or "(nothing)"
        body = (
            f"pyflue egress proxy: {self.method} {self.host or '?'}:{self.port} refused: "
            f"{reason}. {detail}\n"
            f"This run may reach: {names} (ports 80 and 443, through this proxy only).\n"
            'To reach another host, add it to the agent\'s "egress" list; the server must '
            "allow it too (PYFLUE_SANDBOX_MAX_EGRESS).\n"
        ).encode()
        phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nX-Pyflue-Egress: {reason}\r\n"
                "Connection: close\r\n\r\n").encode()
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(head + body)
            await self.writer.drain()

    def record(self) -> None:
        self.run.emit(Egress(
            host=self.host or "?", port=self.port, method=self.method or "?",
            decision="allowed" if self.decision == "allowed" else "denied", reason=self.reason,
            address=self.address, bytes_up=self.up, bytes_down=self.down,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            secrets=self.swapped or None,
        ))


def _host_of(value: str) -> str:
    return (urlsplit("//" + value.strip()).hostname or "").lower().rstrip(".")


def _swap(value: str, secret: EgressSecret) -> tuple[str, bool]:
    """``value`` with the placeholder replaced, also inside ``Basic`` credentials (git)."""
    if secret.placeholder in value:
        return value.replace(secret.placeholder, secret.value), True
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "basic" and token:
        with contextlib.suppress(ValueError):
            decoded = base64.b64decode(token.strip(), validate=True).decode("latin-1")
            if secret.placeholder in decoded:
                swapped = decoded.replace(secret.placeholder, secret.value)
                return f"{scheme} {base64.b64encode(swapped.encode('latin-1')).decode()}", True
    return value, False


async def _client_hello(reader: asyncio.StreamReader) -> bytes | None:
    """The first TLS record (the ClientHello), or None when the tunnel does not start with
    one."""
    try:
        header = await asyncio.wait_for(reader.readexactly(5), HEAD_TIMEOUT)
        if header[0] != 0x16:  # handshake
            return None
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[3:5])),
                                      HEAD_TIMEOUT)
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        return None
    return header + body


def _sni(record: bytes) -> str | None:
    """The server name of a ClientHello record (RFC 8446 4.1.2, RFC 6066 3)."""
    try:
        at = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        at += 1 + record[at]  # session id
        at += 2 + int.from_bytes(record[at:at + 2])  # cipher suites
        at += 1 + record[at]  # compression methods
        end = at + 2 + int.from_bytes(record[at:at + 2])
        at += 2
        while at + 4 <= end:
            kind, size = int.from_bytes(record[at:at + 2]), int.from_bytes(record[at + 2:at + 4])
            if kind == 0:  # server_name: list length, type (0 = host name), name length, name
                name_len = int.from_bytes(record[at + 7:at + 9])
                return record[at + 9:at + 9 + name_len].decode("ascii").lower().rstrip(".")
            at += 4 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def receive(sock: socket.socket, proxy: EgressProxy,
            ready: Callable[[], None]) -> Callable[[], None]:
    """A reader callback for the relay's datagram socket: each datagram carries accepted
    connections as file descriptors (SCM_RIGHTS); each goes to ``proxy``. A datagram
    ``ready`` without any says the relay listens."""

    def on_readable() -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 64, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("egress relay socket failed")
                return
            if data == b"ready" and not fds:
                ready()
            for fd in fds:
                try:
                    conn = socket.socket(fileno=fd)
                except OSError:
                    os.close(fd)
                    continue
                proxy.accept(conn)

    return on_readable
