"""Test hosts for egress: HTTP (80) and HTTPS (443, a test CA) servers in containers on a Docker
network the test creates, and a hosts file mapping their test names (``*.egress.test``) to
them. Nothing else is ever a target: the proxy resolves these names through the hosts file,
and the test's own network is the only non-public range it allows."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflue.settings import DEFAULT_IMAGE

LABEL = "dev.pyflue.test"

# Each host answers GET/POST with JSON naming itself, the path and the headers it got; /big/N
# sends N bytes; /repo.git/ is a git repository over "dumb" HTTP(S); /simple/ is a package index
# (PEP 503) holding one small wheel, ``egresstiny``.
SERVER = r"""
import hashlib, http.server, json, os, ssl, sys, threading
NAME = os.environ["NAME"]
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *a, **k):
        super().__init__(*a, directory="/srv", **k)
    def do_GET(self):
        if self.path.startswith(("/repo.git/", "/simple/")):
            return super().do_GET()
        if self.path.startswith("/big/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            while n > 0:
                self.wfile.write(chunk[:min(n, len(chunk))])
                n -= len(chunk)
            return
        body = json.dumps({"host": NAME, "path": self.path,
                           "headers": dict(self.headers.items()),
                           "digests": {k: hashlib.sha256(v.encode()).hexdigest()
                                       for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass
def serve(port, tls):
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain("/certs/server.pem", "/certs/server.key")
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
threading.Thread(target=serve, args=(443, True), daemon=True).start()
serve(80, False)
"""
REPO = ("mkdir -p /srv && cd /tmp && git init -q -b main w && cd w && echo hello > README "
        "&& git -c user.name=t -c user.email=t@t add README "
        "&& git -c user.name=t -c user.email=t@t commit -qm init "
        "&& git clone -q --bare . /srv/repo.git && cd /srv/repo.git && git update-server-info "
        "&& cp -r /certs/simple /srv/simple")
INDEX_PACKAGE, INDEX_VERSION = "egresstiny", "1.0"


@dataclass
class EgressHosts:
    """The test's network (its subnet is what the proxy may reach), its hosts by name, the
    hosts file for PYFLUE_SANDBOX_EGRESS_HOSTS_FILE and the test CA for the sandbox."""

    subnet: str
    addresses: dict[str, str]
    hosts_file: Path
    ca: Path


def _certs(folder: Path, names: list[str]) -> Path:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=pyflue egress test CA", "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}",
        "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names))
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    for name in ("server.key", "server.pem", "ca.pem"):
        (folder / name).chmod(0o644)
    return folder / "ca.pem"


def _index(folder: Path) -> None:
    """``folder/simple``: a PEP 503 index of one pure-Python wheel, made here (no download)."""
    name, version = INDEX_PACKAGE, INDEX_VERSION
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"GREETING = 'installed through the egress proxy'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pyflue-tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    page = folder / "simple" / name
    page.mkdir(parents=True)
    with zipfile.ZipFile(page / wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    (page / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{wheel}">{wheel}</a></body></html>\n')
    (folder / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{name}/">{name}</a></body></html>\n')
    for item in (folder / "simple").rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)
    (folder / "simple").chmod(0o755)


@contextlib.contextmanager
def egress_hosts(client: Any, folder: Path, names: list[str]) -> Iterator[EgressHosts]:
    """Starts one server container per name on a new network; removes them all after."""
    token = secrets.token_hex(4)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    ca = _certs(folder, names)
    _index(folder)
    network = client.networks.create(f"pyflue-test-egress-{token}", driver="bridge",
                                     labels={LABEL: "egress"})
    started: list[Any] = []
    try:
        for i, name in enumerate(names):
            started.append(client.containers.run(
                DEFAULT_IMAGE, ["sh", "-c", f"{REPO} && exec python3 -c \"$0\"", SERVER],
                name=f"pyflue-test-egress-{token}-{i}", user="0:0", detach=True,
                environment={"NAME": name}, network=network.name, labels={LABEL: "egress"},
                volumes={str(folder): {"bind": "/certs", "mode": "ro"}}, read_only=False))
        network.reload()
        addresses = {}
        for name, container in zip(names, started, strict=True):
            container.reload()
            addresses[name] = container.attrs["NetworkSettings"]["Networks"][network.name][
                "IPAddress"]
        subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
        _wait_listening(started)
        hosts_file = folder / "hosts"
        hosts_file.write_text("".join(f"{addresses[n]} {n}\n" for n in names))
        yield EgressHosts(subnet=subnet, addresses=addresses, hosts_file=hosts_file, ca=ca)
    finally:
        for container in started:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        with contextlib.suppress(Exception):
            network.remove()


def _wait_listening(containers: list[Any]) -> None:
    deadline = time.monotonic() + 30
    for container in containers:
        while True:
            code, _ = container.exec_run(["python3", "-c", "import socket; "
                                          "socket.create_connection(('127.0.0.1', 443), 1); "
                                          "socket.create_connection(('127.0.0.1', 80), 1)"])
            if code == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"test host {container.name} did not start: "
                                   f"{container.logs().decode()[-2000:]}")
            time.sleep(0.1)
