"""Untrusted commands try to break out; each attempt must fail in the expected way."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

PROBE = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    out = {}
    for name, command in ctx.payload["probes"].items():
        out[name] = await h.shell(command, timeout=30, env=ctx.payload.get("env"))
    return out
"""
# gVisor's /proc/self/status has no NoNewPrivs line: ask the kernel (PR_GET_NO_NEW_PRIVS).
NO_NEW_PRIVS = ("python3 -c \"import ctypes; "
                "print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))\"")


async def _probe(runner: Runner, write_workflow: WriteWorkflow, probes: dict[str, str],
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    write_workflow("probe", PROBE)
    run = await runner.run("probe", {"probes": probes, "env": env})
    assert run.status is RunStatus.completed, run.error
    result: dict[str, Any] = run.result
    return result


async def test_privileged_operations_fail(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    r = await _probe(runner, write_workflow, {
        "status": "grep -E '^(Uid|CapEff|CapPrm|CapBnd|Seccomp):' /proc/self/status",
        "no_new_privs": NO_NEW_PRIVS,
        "mount": "mount -t tmpfs none /mnt",
        "unshare": "unshare --user --map-root-user true || unshare -r true",
        "docker_socket": "ls -l /var/run/docker.sock /run/docker.sock",
        "root_write": "echo x > /etc/pyflue-owned",
        "usr_write": "touch /usr/bin/evil",
        "chown": "chown 0:0 /workspace",
        "su": "su -c id root </dev/null",
    })
    status = dict(line.split(":\t", 1) for line in r["status"]["stdout"].splitlines())
    assert status["Uid"].split()[0] == "1000"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert r["no_new_privs"]["stdout"].strip() == "1"
    if runtime == "runc":
        assert status["Seccomp"] == "2"  # filter mode: Docker's default profile
    # gVisor: commands talk to its own kernel (the Sentry), which the host confines with its
    # own seccomp filter; `runsc exec` applies no OCI profile to exec'd processes.
    for name in ("mount", "docker_socket", "root_write", "usr_write", "chown", "su"):
        assert r[name]["exit_code"] != 0, (name, r[name])
    if runtime == "runc":
        assert r["unshare"]["exit_code"] != 0, r["unshare"]
    # gVisor lets a command make a user namespace of its own kernel's (no OCI seccomp on
    # exec'd processes); it grants nothing outside the Sentry (docs/security.md).


async def test_ptrace_of_the_sandbox_init_fails(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    r = await _probe(runner, write_workflow, {
        "ptrace": "python3 -c \"import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); "
                  "r=l.ptrace(16, 1, 0, 0); sys.exit(0 if r == 0 else ctypes.get_errno())\"",
        "memory": "head -c 16 /proc/1/mem",
        "environ": "cat /proc/1/environ",
    }, env={"CANARY_FOR_THIS_CALL": "pyflue-canary-e7c1"})
    assert r["ptrace"]["exit_code"] == 1  # EPERM
    assert r["memory"]["exit_code"] != 0
    # A command's environment (where granted secrets go) never reaches PID 1. Under runc its
    # environ cannot be read at all; gVisor shows it, and it holds only the image's variables.
    assert "pyflue-canary-e7c1" not in r["environ"]["stdout"]
    if runtime == "runc":
        assert r["environ"]["exit_code"] != 0


async def test_a_setuid_root_binary_in_the_workspace_grants_nothing(
    runner: Runner, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    write_workflow("suid", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    PLANT(h.sandbox_id)
    return [await h.shell("find /workspace/myid -printf '%U %M'"),
            await h.shell("/workspace/myid -u")]
""")
    binary = shutil.which("id")
    assert binary is not None
    data = Path(binary).read_bytes()

    def plant(container_id: str) -> None:
        # As a hostile archive would: owned by root, setuid, straight through the engine.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("myid")
            info.size, info.mode, info.uid, info.gid = len(data), 0o4755, 0, 0
            tar.addfile(info, io.BytesIO(data))
        docker_client.api.put_archive(container_id, "/workspace", buf.getvalue())

    runner.registry.get("suid").module.PLANT = plant  # type: ignore[attr-defined]
    run = await runner.run("suid", {})
    stat, who = run.result
    assert stat["stdout"].startswith("0 -rws")  # it really is setuid root...
    assert who["stdout"].strip() == "1000"  # ...and still runs as the sandbox user


async def test_filling_the_workspace_and_tmp_hits_their_caps(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    before = shutil.disk_usage("/var/lib/docker" if shutil.os.path.exists("/var/lib/docker") else "/")
    r = await _probe(runner, write_workflow, {
        "workspace": "dd if=/dev/zero of=/workspace/fill bs=1M count=3000",
        "tmp": "dd if=/dev/zero of=/tmp/fill bs=1M count=3000",
        "sizes": "df -m /workspace /tmp | tail -2",
    })
    after = shutil.disk_usage("/var/lib/docker" if shutil.os.path.exists("/var/lib/docker") else "/")
    assert "No space left on device" in r["workspace"]["stdout"] + r["workspace"]["stderr"], r
    assert "No space left on device" in r["tmp"]["stdout"] + r["tmp"]["stderr"]
    assert before.free - after.free < 500 * 2**20  # tmpfs: the host disk is untouched


async def test_there_is_no_network_way_out(runner: Runner, write_workflow: WriteWorkflow) -> None:
    connect = ("python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(2); "
               "s.connect(('{}', {})); print('connected')\"")
    r = await _probe(runner, write_workflow, {
        "interfaces": "python3 -c 'import socket; print(*[n for _, n in socket.if_nameindex()])'",
        "routes": "tail -n +2 /proc/net/route | wc -l",
        "dns": "getent hosts deb.debian.org",
        "metadata": connect.format("169.254.169.254", 80),
    })
    assert r["interfaces"]["stdout"].split() == ["lo"]
    assert r["routes"]["stdout"].strip() == "0"
    assert r["dns"]["exit_code"] != 0
    assert r["metadata"]["exit_code"] != 0 and "connected" not in r["metadata"]["stdout"]
    assert any(w in r["metadata"]["stderr"].lower() for w in ("unreachable", "no route"))


async def test_one_run_cannot_reach_another(runner: Runner, write_workflow: WriteWorkflow) -> None:
    import asyncio

    write_workflow("listen", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    return await h.shell("timeout 3 python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1; "
                         "echo served")
""")
    write_workflow("knock", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    import asyncio
    h = await ctx.init(agent)
    await asyncio.sleep(1)
    return await h.shell("python3 -c \\"import urllib.request as u; u.urlopen('http://127.0.0.1:8000', timeout=2)\\"")
""")
    listen, knock = await asyncio.gather(runner.run("listen", {}), runner.run("knock", {}))
    assert listen.result["stdout"] == "served\n"
    assert knock.result["exit_code"] != 0 and "refused" in knock.result["stderr"].lower()
