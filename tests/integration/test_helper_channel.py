"""The helper channel in real sandboxes, beyond the channel contract (test_channel.py): which
channel a run gets and how it says so, images without Python, a helper killed by a command,
garbage and forged frames from the container, and the fallback to docker exec."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyflue.errors import SandboxError
from pyflue.events import ContainerStarted, EventData, EventType, Log
from pyflue.models import RunStatus, new_run_id
from pyflue.runs import Runner
from pyflue.sandbox.base import PutEntry, SandboxSpec
from pyflue.sandbox.docker.box import DockerSandbox
from pyflue.sandbox.docker.exec_channel import ExecChannel
from pyflue.sandbox.docker.helper_channel import (
    BULK_BYTES,
    MAX_RESTARTS,
    HelperChannel,
    HelperCommand,
    HelperUnavailable,
)
from pyflue.sandbox.docker.helper_setup import HELPER, HelperSetup, socket_path
from pyflue.sandbox.docker.lifecycle import DockerProvider
from pyflue.settings import DEFAULT_IMAGE
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

NO_PYTHON = "pyflue/bookworm-base:latest"  # built by `pyflue images build`; has no python3
USER = "1000:1000"
WS = "/workspace"

WORKFLOW = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"image": ctx.payload["image"], "runtime": ctx.payload["runtime"]})

async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("note.txt", "written through the channel")
    shell = await h.shell("cat note.txt; command -v python3 || echo no-python")
    return {"out": shell["stdout"], "read": await h.fs.read_file("note.txt")}
"""


@pytest.mark.parametrize("image", [DEFAULT_IMAGE, NO_PYTHON])
async def test_a_run_gets_the_helper_channel_in_any_image_and_says_so(
    runner: Runner, write_workflow: WriteWorkflow, docker_client: Any, runtime: str, image: str
) -> None:
    if image == NO_PYTHON:
        try:
            docker_client.images.get(image)
        except Exception:
            pytest.skip(f"{image} is not built here (`pyflue images build` makes it)")
    write_workflow("chan", WORKFLOW)
    run = await runner.run("chan", {"image": image, "runtime": runtime})
    assert run.status is RunStatus.completed, run.error
    assert run.result["read"] == "written through the channel"
    if image == NO_PYTHON:
        assert run.result["out"].endswith("no-python\n")
    [started] = await runner.store.list_events(run.run_id, types=[EventType.container_started])
    assert started.data["channel"] == "helper" and "channel_reason" not in started.data


@contextlib.asynccontextmanager
async def sandbox(runtime: str) -> AsyncIterator[tuple[DockerSandbox, list[EventData]]]:
    provider = DockerProvider(scope=f"test-helper-{uuid.uuid4().hex[:12]}")
    events: list[EventData] = []
    spec = SandboxSpec(run_id=new_run_id("helper"), workflow="helper", image=DEFAULT_IMAGE,
                       runtime=runtime)
    try:
        async with provider.open(spec, events.append) as box:
            assert isinstance(box, DockerSandbox)
            yield box, events
    finally:
        await provider.close()


async def shell(box: DockerSandbox, command: str, timeout: float = 30, *, cwd: str = WS,
                env: dict[str, str] | None = None) -> tuple[int, bytes]:
    out = bytearray()

    def on_output(stream: str, data: bytes) -> None:
        out.extend(data)

    status = await box.exec(command, cwd=cwd, env=env or {}, timeout=timeout,
                            on_output=on_output)
    return status.exit_code, bytes(out)


async def test_a_command_that_kills_the_helper_gets_a_clear_error_and_the_next_call_restarts_it(
    runtime: str,
) -> None:
    async with sandbox(runtime) as (box, events):
        channel = box.channel
        assert isinstance(channel, HelperChannel) and channel.pid is not None
        first_pid = channel.pid
        async with asyncio.timeout(30):  # never a hang
            # The command's stream ends with the helper (no exit code: -1), like a command
            # killed under docker exec; what is waiting for a reply fails clearly.
            pending = asyncio.ensure_future(channel.run(["sleep", "5"], user=USER))
            await asyncio.sleep(0.2)
            assert (await shell(box, f"kill -9 {channel.pid}; sleep 1"))[0] == -1
            with pytest.raises(SandboxError, match=r"helper in the sandbox ended.*starts it again"):
                await pending
            assert await shell(box, "echo still here") == (0, b"still here\n")
            assert (await box.lstat(WS)) is not None
        # A new helper serves the calls (not docker exec), and the run was told
        assert channel.dead is None and channel.restarts == 1
        assert channel.pid is not None and channel.pid != first_pid
        assert (await channel.run(["sh", "-c", "echo $PPID"], user=USER)).stdout.strip() \
            == str(channel.pid).encode()
        started = [e for e in events if isinstance(e, ContainerStarted)]
        assert [e.channel for e in started] == ["helper"]
        warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warn"]
        assert any("helper in the sandbox ended" in w and "started again" in w
                   for w in warnings), warnings


async def test_a_helper_killed_again_and_again_gives_way_to_docker_exec(runtime: str) -> None:
    async with sandbox(runtime) as (box, events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        async with asyncio.timeout(60):
            for _ in range(MAX_RESTARTS + 1):
                assert await box.lstat(WS) is not None  # (starts the helper again)
                assert (await shell(box, f"kill -9 {channel.pid}; sleep 1"))[0] == -1
        assert channel.restarts == MAX_RESTARTS and channel.dead is not None
        # docker exec serves what is left of the run
        assert await shell(box, "echo still here") == (0, b"still here\n")
        warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warn"]
        assert sum("started again" in w for w in warnings) == MAX_RESTARTS
        assert "falling back to docker exec" in warnings[-1]
        # A command handed to the helper that finds it gone: docker exec gets only "/", a shell
        # inside enters the folder (never the runtime, CVE-2024-21626).
        assert (await shell(box, "mkdir -p sub"))[0] == 0
        late = HelperCommand(channel, ["pwd"], f"{WS}/sub", {}, USER)
        assert [c async for c in late.output()] == [("stdout", b"/workspace/sub\n")]
        assert late.exit_code == 0


async def _injecting_channel(provider: DockerProvider, container_id: str,
                             inject: str) -> HelperChannel:
    """A helper whose stdout gets ``inject`` (printf format) spliced in after its greeting,
    once the file WS/go exists: what a compromised or broken helper could send."""
    api = provider.client.api
    channel = HelperChannel(api, provider.bridge, container_id, user=USER,
                            fallback=ExecChannel(api, provider.bridge, container_id))
    socket = socket_path(provider.base_url)
    assert socket is not None
    script = (f"{HELPER} | {{ head -c 28; until [ -e {WS}/go ]; do sleep 0.02; done; "
              f"printf '{inject}'; cat; }}")
    await channel.start(["/bin/sh", "-c", script], socket)
    return channel


@pytest.fixture
async def provider_and_container(runtime: str) -> AsyncIterator[tuple[DockerProvider, str]]:
    provider = DockerProvider(scope=f"test-helper-{uuid.uuid4().hex[:12]}")
    spec = SandboxSpec(run_id=new_run_id("garbage"), workflow="garbage", image=DEFAULT_IMAGE,
                       runtime=runtime)
    try:
        async with provider.open(spec, lambda event: None) as box:
            yield provider, box.id
    finally:
        await provider.close()


async def test_garbage_from_the_helper_fails_the_call_and_later_calls_use_docker_exec(
    provider_and_container: tuple[DockerProvider, str],
) -> None:
    provider, cid = provider_and_container
    channel = await _injecting_channel(provider, cid, "GARBAGE GARBAGE GARBAGE")
    try:
        pending = asyncio.ensure_future(channel.stat(WS))
        await asyncio.sleep(0.3)
        await channel.fallback.run(["touch", f"{WS}/go"], user=USER)
        async with asyncio.timeout(30):
            with pytest.raises(SandboxError, match="garbage"):
                await pending
            assert channel.dead is not None and "garbage" in channel.dead
            done = await channel.run(["echo", "via docker exec"], user=USER)
        assert done.stdout == b"via docker exec\n"
    finally:
        await channel.close()


async def test_a_forged_reply_fails_only_its_call(
    provider_and_container: tuple[DockerProvider, str],
) -> None:
    provider, cid = provider_and_container
    # A well-formed frame claiming to answer request 1 (the stat below) with a bad payload.
    forged = r"\000\000\000\003\210\000\000\000\000\000\000\001abc"
    channel = await _injecting_channel(provider, cid, forged)
    try:
        pending = asyncio.ensure_future(channel.stat(WS))
        await asyncio.sleep(0.3)
        await channel.fallback.run(["touch", f"{WS}/go"], user=USER)
        async with asyncio.timeout(30):
            with pytest.raises(SandboxError, match="bad reply"):
                await pending
            stat = await channel.stat(WS)  # the helper's real reply to 1 was ignored
        assert stat is not None and stat.kind == "dir"
        assert channel.dead is None
    finally:
        await channel.close()


async def test_a_helper_that_cannot_start_is_refused_and_the_sandbox_uses_docker_exec(
    provider_and_container: tuple[DockerProvider, str],
) -> None:
    provider, cid = provider_and_container
    api = provider.client.api
    channel = HelperChannel(api, provider.bridge, cid, user=USER,
                            fallback=ExecChannel(api, provider.bridge, cid))
    socket = socket_path(provider.base_url)
    assert socket is not None
    with pytest.raises(HelperUnavailable):
        await channel.start(["/no/such/helper"], socket)
    with pytest.raises(HelperUnavailable, match="greeting"):
        await channel.start(["/bin/echo", "hello"], socket)
    told: list[tuple[str, str | None]] = []
    setup = HelperSetup(lambda: provider.client, provider.bridge, "tcp://127.0.0.1:2375")
    await setup.prepare(DEFAULT_IMAGE)
    chosen = await setup.channel(api, cid, USER, lambda kind, why: told.append((kind, why)))
    assert isinstance(chosen, ExecChannel)
    assert told == [("exec", "the engine is not on a local unix socket")]


async def test_bulk_copies_go_through_the_engine_where_it_sees_the_path_and_the_helper_elsewhere(
    runtime: str,
) -> None:
    big = os.urandom(BULK_BYTES + 4096)
    async with sandbox(runtime) as (box, _events):
        assert isinstance(box.channel, HelperChannel)
        for folder in (WS, "/tmp"):  # a volume, and a tmpfs the engine cannot write or see
            await box.put(folder, [PutEntry(path="big.bin", data=big)])
            assert await box.read_file(f"{folder}/big.bin", max_bytes=len(big)) == big
        code, out = await shell(box, r"find /workspace/big.bin /tmp/big.bin -printf '%U:%G %s\n'")
        assert (code, out.split(b"\n")[:2]) == (0, [f"1000:1000 {len(big)}".encode()] * 2)


async def test_a_small_file_read_and_a_command_folder_never_follow_a_symlinked_folder(
    runtime: str,
) -> None:
    # The helper's own small-file tar (no fork) and its start of a command without the shell
    # wrapper open every folder with O_NOFOLLOW, like its tar child does.
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert (await shell(box, "mkdir -p /tmp/outside d && echo SECRET > /tmp/outside/s.txt"
                                 " && echo inside > d/s.txt && ln -s /tmp/outside l"))[0] == 0

        def read(chunks: Any) -> bytes:
            return b"".join(chunks)

        with tarfile.open(fileobj=io.BytesIO(await channel.get_archive(f"{WS}/d/s.txt", read))) \
                as tar:
            assert tar.getnames() == ["s.txt"]
        with pytest.raises(SandboxError, match="Not a directory"):
            await channel.get_archive(f"{WS}/l/s.txt", read)
        out: list[bytes] = []
        for cwd, want in ((f"{WS}/l", 126), (f"{WS}/d", 0)):
            out.clear()
            status = await box.exec("pwd; cat s.txt", cwd=cwd, env={}, timeout=20,
                                    on_output=lambda _s, chunk: out.append(chunk))
            assert status.exit_code == want, (cwd, out)
            assert b"SECRET" not in b"".join(out)
        assert b"".join(out) == b"/workspace/d\ninside\n"


# -- the spare shell (docs/sandbox.md#the-channel) ----------------------------------------------

# Matches the spare's command line (its stub names this variable), not this pattern's own
SPARE = "__pyflue[_]cmd"


async def test_a_bash_command_after_another_runs_in_the_spare_shell_as_bash_c_would(
    runtime: str,
) -> None:
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert await shell(box, "exit 3") == (3, b"")
        assert channel.spare_hits == 0
        # $0, stdin /dev/null, its own session, no trace of the stub's variable or fd 3
        code, out = await shell(
            box, 'echo "$0 ${__pyflue_cmd-unset} $(cat | wc -c)"; '
                 '[ $$ = "$(ps -o sid= -p $$ | tr -d " ")" ] && echo leader; '
                 '[ -e /proc/self/fd/3 ] || echo no-fd3; exit 5')
        assert (code, out) == (5, b"pyflue-shell unset 0\nleader\nno-fd3\n")
        assert channel.spare_hits == 1
        assert await shell(box, "/bin/true") == (0, b"")  # an external command, too
        assert channel.spare_hits == 2


async def test_a_changed_folder_or_env_never_uses_a_stale_spare(runtime: str) -> None:
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert await shell(box, "mkdir -p a b && echo $V", env={"V": "1"}) == (0, b"1\n")
        assert await shell(box, "pwd; echo $V", cwd=f"{WS}/a", env={"V": "1"}) \
            == (0, b"/workspace/a\n1\n")
        assert await shell(box, "pwd; echo $V", cwd=f"{WS}/a", env={"V": "2"}) \
            == (0, b"/workspace/a\n2\n")
        assert await shell(box, "echo ${V-none}", cwd=f"{WS}/a") == (0, b"none\n")
        assert channel.spare_hits == 0
        # The same folder and env: the spare. A folder replaced meanwhile (by a helper command,
        # which leaves a spare with no env of its own alone): not the spare, the new folder.
        assert await shell(box, "pwd -P", cwd=f"{WS}/a") == (0, b"/workspace/a\n")
        assert channel.spare_hits == 1
        assert (await channel.run(["sh", "-c", f"rm -r {WS}/a && mkdir {WS}/a && touch {WS}/a/new"],
                                  user=USER)).exit_code == 0
        assert await shell(box, "ls", cwd=f"{WS}/a") == (0, b"new\n")
        assert channel.spare_hits == 1


async def test_a_secret_given_to_one_command_is_not_visible_to_a_later_command_without_it(
    runtime: str,
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    look = (f"echo ${{TOKEN-none}}; grep -l {secret} /proc/[0-9]*/environ 2>/dev/null | wc -l; "
            f"pgrep -c -f '{SPARE}' || true")
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert await shell(box, "true", env={"TOKEN": secret}) == (0, b"")
        # the same env: the spare started with it serves it
        assert await shell(box, "echo $TOKEN", env={"TOKEN": secret}) == (0, f"{secret}\n".encode())
        assert channel.spare_hits == 1
        # another env: that spare is gone before the command starts
        assert await shell(box, look) == (0, b"none\n0\n0\n")
        # nor does a helper command of ours, started while such a spare waited, see it
        assert await shell(box, "true", env={"TOKEN": secret}) == (0, b"")
        done = await channel.run(["sh", "-c", f"grep -l {secret} /proc/[0-9]*/environ | wc -l"],
                                 user=USER)
        assert done.stdout == b"0\n"


async def test_a_killed_spare_gives_way_to_a_fresh_shell(runtime: str) -> None:
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert await shell(box, "true") == (0, b"")
        # Killed from outside the helper (docker exec), so it cannot know but by the kill
        async with asyncio.timeout(20):
            while (await channel.fallback.run(["pkill", "-9", "-f", SPARE],
                                              user=USER)).exit_code != 0:
                await asyncio.sleep(0.05)
            while (await channel.fallback.run(["pgrep", "-f", SPARE], user=USER)).exit_code == 0:
                await asyncio.sleep(0.05)
        assert await shell(box, "echo fine; exit 4") == (4, b"fine\n")
        assert channel.spare_hits == 0
        assert await shell(box, "echo again") == (0, b"again\n")  # and the next spare serves
        assert channel.spare_hits == 1


async def test_a_timeout_or_a_cancel_through_the_spare_kills_the_whole_process_tree(
    runtime: str,
) -> None:
    async with sandbox(runtime) as (box, _events):
        channel = box.channel
        assert isinstance(channel, HelperChannel)
        assert await shell(box, "true") == (0, b"")
        out = bytearray()
        status = await box.exec("sleep 1000 & sleep 1000 & echo waiting; wait", cwd=WS, env={},
                                timeout=1, on_output=lambda _s, data: out.extend(data))
        assert (status.exit_code, status.timed_out, status.killed) == (124, True, "group")
        assert bytes(out) == b"waiting\n" and channel.spare_hits == 1
        assert await shell(box, "pgrep -c -x sleep || true") == (0, b"0\n")
        assert channel.spare_hits == 2
        seen = asyncio.Event()
        task = asyncio.ensure_future(box.exec(
            "sleep 1000 & echo waiting; wait", cwd=WS, env={}, timeout=60,
            on_output=lambda _s, _data: seen.set()))
        async with asyncio.timeout(20):
            await seen.wait()
        assert channel.spare_hits == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await shell(box, "pgrep -c -x sleep || true") == (0, b"0\n")
