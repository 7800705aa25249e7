"""The hardening, read from inside a run's container by the untrusted side itself.

System calls are made by a small static program (tests/security/data/syscalls.c, built here
with ``gcc -static``) that calls each one itself, so a refusal is the kernel's (or gVisor's),
not a util-linux binary giving up early for a non-root user.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import PoolSettings, Settings
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

SOURCE = Path(__file__).parent / "data" / "syscalls.c"

WORKFLOW = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"cpus": ctx.payload.get("cpus")})
async def run(ctx):
    h = await ctx.init(agent)
    for name, data in ctx.payload.get("files", {}).items():
        await h.fs.write_file(name, bytes.fromhex(data), mode=0o755)
    return {name: await h.shell(command, timeout=30)
            for name, command in ctx.payload["probes"].items()}
"""


@pytest.fixture(scope="session")
def syscalls_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the syscall probe (./scripts/setup installs it)")
    out = tmp_path_factory.mktemp("syscalls") / "syscalls"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(SOURCE)], check=True,
                   capture_output=True, timeout=120)
    return out.read_bytes()


async def _probe(runner: Runner, write_workflow: WriteWorkflow, probes: dict[str, str],
                 **payload: Any) -> dict[str, Any]:
    write_workflow("inside", WORKFLOW)
    run = await runner.run("inside", {"probes": probes, **payload})
    assert run.status is RunStatus.completed, run.error
    if (launch := getattr(runner, "expected_launch", None)) is not None:
        [started] = await runner.store.list_events(run.run_id,
                                                   types=[EventType.container_started])
        assert started.data["launch"] == launch, started.data
    result: dict[str, Any] = run.result
    return result


@pytest.fixture(params=["cold", "warm"])
async def launched(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Runner]:
    """A runner whose run gets a cold container, or one from the warm pool (made ahead of the
    run, the same hardening): each case below holds for both."""
    warm = request.param == "warm"
    pooled = settings.model_copy(update={"pool": PoolSettings(size=1 if warm else 0)})
    async with open_runner(pooled, pool=warm) as runner:
        if warm:
            assert await runner.provider.pool.wait_filled(60)  # type: ignore[attr-defined]
        runner.expected_launch = request.param  # type: ignore[attr-defined]
        yield runner


async def test_privileged_system_calls_are_refused_by_the_kernel(
    launched: Runner, write_workflow: WriteWorkflow, runtime: str, syscalls_binary: bytes
) -> None:
    r = await _probe(launched, write_workflow, {"calls": "./syscalls"},
                     files={"syscalls": syscalls_binary.hex()})
    assert r["calls"]["exit_code"] == 0, r["calls"]
    calls = {name: (int(rc), err) for name, rc, err in
             (line.split() for line in r["calls"]["stdout"].splitlines())}
    assert set(calls) == {"keyctl", "bpf", "setns", "clock_settime", "mount", "chroot",
                          "sethostname", "unshare_mount", "unshare_net", "unshare_user"}
    if runtime == "runc":  # Docker's seccomp profile and no capabilities: EPERM, every one
        assert calls == {name: (-1, "EPERM") for name in calls}, calls
        return
    # gVisor: its own kernel answers. A user namespace of that kernel is allowed (it grants
    # nothing on the host, docs/security.md); everything else fails.
    for name in ("keyctl", "bpf", "setns", "clock_settime", "mount", "chroot", "sethostname"):
        assert calls[name][0] == -1, (name, calls[name])
    for name in ("clock_settime", "mount", "sethostname"):
        assert calls[name] == (-1, "EPERM"), (name, calls[name])


WRITE = ("python3 -c \"import os,sys,errno\n"
         "try:\n open(sys.argv[1] + '/pyflue-probe', 'w').write('x'); print('written')\n"
         "except OSError as e: print(errno.errorcode[e.errno])\" {}")


async def test_the_root_filesystem_is_read_only_where_the_image_lets_the_user_write(
    launched: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    r = await _probe(launched, write_workflow, {
        # /var/tmp is 1777 in the image: only the read-only root stops the sandbox user there.
        "var_tmp_mode": "python3 -c \"import os; print('%o' % (os.stat('/var/tmp').st_mode & 0o7777))\"",
        "var_tmp": WRITE.format("/var/tmp"),
        "etc": WRITE.format("/etc"),
        "shm": WRITE.format("/dev/shm"),
        "mounts": "cat /proc/self/mountinfo",
        "kcore": "head -c 16 /proc/kcore | wc -c",
        "proc_sys": "echo pyflue > /proc/sys/kernel/hostname",
        "firmware": "ls -A /sys/firmware | wc -l",
    })
    assert r["var_tmp_mode"]["stdout"].strip() == "1777"
    assert r["var_tmp"]["stdout"].strip() == "EROFS"
    assert r["etc"]["stdout"].strip() in ("EROFS", "EACCES")
    # /dev/shm is the engine's own small tmpfs (64 MiB, charged to the memory limit): writable,
    # but nothing in it can be executed, be setuid or be a device.
    mounts = [line.split() for line in r["mounts"]["stdout"].splitlines()]
    by_target = {m[4]: m for m in mounts}
    assert r["shm"]["stdout"].strip() == "written"
    assert "noexec" in by_target["/dev/shm"][5].split(",")
    assert by_target["/"][5].split(",")[0] == "ro"
    assert r["kcore"]["stdout"].strip() == "0"  # masked (or absent): never the kernel's memory
    assert r["proc_sys"]["exit_code"] != 0
    assert r["firmware"]["stdout"].strip() in ("0", "")
    if runtime == "runc":
        assert {"nosuid", "nodev"} <= set(by_target["/dev/shm"][5].split(","))
        assert by_target["/proc/sys"][5].split(",")[0] == "ro"
        # No host folder is bind-mounted: a mount whose root is a path of a host filesystem is
        # only one of the engine's per-container files or a Docker volume of ours.
        for m in mounts:
            root, target = m[3], m[4]
            if root == "/" or m[m.index("-") + 1] in ("proc", "cgroup", "tmpfs", "sysfs"):
                continue
            assert (target in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")
                    and root.startswith("/var/lib/docker/containers/")) or (
                    root.startswith("/var/lib/docker/volumes/pyflue-")), m


async def test_the_cpu_limit_is_readable_inside_the_container(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    if runtime == "runsc":
        pytest.skip("gVisor shows its own cgroup files, not the host's CPU quota")
    r = await _probe(runner, write_workflow, {"quota": (
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
        "echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
    )}, cpus=0.5)
    quota, period = r["quota"]["stdout"].split()
    assert int(quota) / int(period) == 0.5
