"""A Docker engine of a test's own: its socket, data root, exec root and containerd under one
temporary folder, so it can be killed and started again while the rest of the suite keeps the
shared engine (``/var/run/docker.sock`` is never touched).

It shares nothing with the shared engine that they could fight over: it runs in a network
namespace of its own (``unshare --net``), with no bridge network and no iptables or forwarding
rules, its own configuration file (empty), and its own containerd (started by dockerd under the
exec root). The sandbox image is copied in once
(``docker save | docker load``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker


def missing() -> str | None:
    """Why a private engine cannot be started here, or None."""
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return "dockerd and the docker CLI are not installed"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "starting a Docker engine needs root"
    return None


class PrivateEngine:
    def __init__(self) -> None:
        # Short: a unix socket's path is limited to about 100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pyflue-dockerd-", dir="/tmp"))
        self.host = f"unix://{self.root / 'docker.sock'}"
        (self.root / "daemon.json").write_text("{}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115

    def start(self, timeout: float = 30) -> None:
        """Starts dockerd on this engine's roots (again after a kill) and waits until it
        answers."""
        r = self.root
        # Its own network namespace: whatever dockerd does to the network at start (with
        # --bridge none it deletes an interface named docker0, the shared engine's bridge) stays
        # in there. Its socket is a file, reachable from here all the same.
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "dockerd", "--host", self.host, "--data-root", str(r / "data"),
             "--exec-root", str(r / "exec"), "--pidfile", str(r / "docker.pid"),
             "--config-file", str(r / "daemon.json"), "--bridge", "none",
             "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
             "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (r / "dockerd.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"the private dockerd exited ({self.proc.returncode}):\n"
                                     f"{tail}")
            if self.answers():
                return
            time.sleep(0.1)
        raise AssertionError(f"the private dockerd did not answer within {timeout:g} s")

    def answers(self) -> bool:
        """Whether the engine answers ``GET /_ping`` (asked over its socket directly)."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(self.root / "docker.sock"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    def client(self) -> Any:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def load(self, image: str) -> None:
        """Copies ``image`` from the shared engine into this one."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0, f"docker save {image} failed"

    def kill(self) -> None:
        """SIGKILL to dockerd (its containerd follows it), as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        # Its containerd dies with it, but lingers as a zombie until the machine's init reaps
        # it: a dockerd started meanwhile would take that pid for a live containerd and wait
        # for it in vain. Once it no longer runs, its pid file goes.
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        """Removes every container, stops dockerd and removes the folder."""
        if self.proc is not None and self.proc.poll() is not None and self._leftovers():
            # Killed with containers running (their shims live on): a start stops them.
            with contextlib.suppress(AssertionError):
                self.start()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True, v=True)
                client.volumes.prune()
                client.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        # Whatever of this engine still runs (a containerd or shim of a dockerd that could not
        # be started again) is ours: found by the folder in its command line.
        for pid in self._leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # dockerd mounts its data root (and what is under it) on itself: undo that first.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _leftovers(self) -> list[int]:
        """The processes of this engine still running (found by its folder in their command
        line): a containerd, or the shims of its containers."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if str(self.root).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
        return found


def _running(pid: int) -> bool:
    """Whether the process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
