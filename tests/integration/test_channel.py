"""The channel contract (pyflue/sandbox/docker/channel.py), against every adapter and the real
engine, in a hardened run container made by the provider as in production, under each runtime
(runc, and gVisor where the engine has it).

Add an adapter to ADAPTERS and every test here runs over it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from pyflue.errors import SandboxGone
from pyflue.models import new_run_id
from pyflue.sandbox.base import PutEntry, SandboxSpec
from pyflue.sandbox.docker.channel import Channel, Chunk, Command, Completed
from pyflue.sandbox.docker.exec_channel import ExecChannel
from pyflue.sandbox.docker.helper_channel import HelperChannel
from pyflue.sandbox.docker.lifecycle import DockerProvider
from pyflue.sandbox.tario import ChunkReader, build_tar
from pyflue.settings import DEFAULT_IMAGE

pytestmark = pytest.mark.docker

USER = "1000:1000"  # the sandbox user (SandboxSpec's default)
WS = "/workspace"


@contextlib.asynccontextmanager
async def _exec_channel(provider: DockerProvider, container_id: str) -> AsyncIterator[Channel]:
    yield ExecChannel(provider.client.api, provider.bridge, container_id)


@contextlib.asynccontextmanager
async def _helper_channel(provider: DockerProvider, container_id: str) -> AsyncIterator[Channel]:
    api = provider.client.api
    kinds: list[str] = []
    channel = await provider.helper.channel(api, container_id, USER,
                                            lambda kind, _reason: kinds.append(kind))
    assert kinds[0] == "helper" and isinstance(channel, HelperChannel), kinds
    try:
        yield channel
    finally:
        await channel.close()


ADAPTERS: dict[str, Callable[[DockerProvider, str], AbstractAsyncContextManager[Channel]]] = {
    "exec": _exec_channel,
    "helper": _helper_channel,
}


@pytest.fixture
async def provider(docker_client: Any) -> AsyncIterator[DockerProvider]:
    p = DockerProvider(scope=f"test-channel-{uuid.uuid4().hex[:12]}")
    yield p
    await p.close()


@pytest.fixture
async def container_id(provider: DockerProvider, runtime: str) -> AsyncIterator[str]:
    spec = SandboxSpec(run_id=new_run_id("channel"), workflow="channel", image=DEFAULT_IMAGE,
                       runtime=runtime)
    async with provider.open(spec, lambda event: None) as box:
        yield box.id


@pytest.fixture(params=sorted(ADAPTERS))
async def channel(
    request: pytest.FixtureRequest, provider: DockerProvider, container_id: str
) -> AsyncIterator[Channel]:
    async with ADAPTERS[request.param](provider, container_id) as opened:
        yield opened


def sh(channel: Channel, script: str, *, cwd: str = WS, env: dict[str, str] | None = None,
       user: str = USER) -> Command:
    return channel.command(["sh", "-c", script], cwd=cwd, env=env or {}, user=user)


async def collect(command: Command) -> list[Chunk]:
    """The command's output, consecutive chunks of one stream merged."""
    merged: list[Chunk] = []
    async for stream, data in command.output():
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + data)
        else:
            merged.append((stream, data))
    return merged


async def run_ok(channel: Channel, script: str) -> None:
    done = await channel.run(["sh", "-c", script], user=USER)
    assert done.exit_code == 0, done


def members(chunks: Iterator[bytes]) -> dict[str, tuple[int, int, bytes | None]]:
    """A streamed tar's members: name -> (permission bits, uid, data of a regular file)."""
    found = {}
    reader = io.BufferedReader(ChunkReader(chunks))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isreg() else None
            found[member.name] = (member.mode & 0o777, member.uid, data.read() if data else None)
    return found


# -- commands ---------------------------------------------------------------------------------


async def test_output_streams_while_the_command_runs_in_the_order_it_was_written(
    channel: Channel,
) -> None:
    # Each line waits for a file that the test makes only once it has read the line before,
    # so the order of the two streams is the command's, whatever the machine's load.
    command = sh(channel, f"echo one; until [ -e {WS}/go1 ]; do sleep 0.05; done; echo two >&2; "
                          f"until [ -e {WS}/go2 ]; do sleep 0.05; done; echo three")
    seen: list[Chunk] = []
    async for stream, data in command.output():
        seen.append((stream, data))
        text = b"".join(d for _, d in seen)
        if text == b"one\n":
            await run_ok(channel, f"touch {WS}/go1")
        elif text == b"one\ntwo\n":
            await run_ok(channel, f"touch {WS}/go2")
    assert b"".join(d for s, d in seen if s == "stdout") == b"one\nthree\n"
    assert [(s, d) for s, d in seen if d] == [
        ("stdout", b"one\n"), ("stderr", b"two\n"), ("stdout", b"three\n")]
    assert command.exit_code == 0


@pytest.mark.parametrize(("script", "code"), [("true", 0), ("exit 3", 3),
                                              ("no-such-command-xyz", 127)])
async def test_the_exit_code_is_the_commands(channel: Channel, script: str, code: int) -> None:
    command = sh(channel, script)
    await collect(command)
    assert command.exit_code == code


async def test_cwd_env_and_user_apply_to_the_command(channel: Channel) -> None:
    command = sh(channel, 'pwd; echo "$GREETING"; id -u; id -g', cwd="/tmp",
                 env={"GREETING": "hi there"}, user="4321:4322")
    assert await collect(command) == [("stdout", b"/tmp\nhi there\n4321\n4322\n")]


async def test_a_large_output_arrives_whole(channel: Channel) -> None:
    command = sh(channel, "head -c 20000000 /dev/zero | tr '\\0' x; echo end >&2")
    sizes = {"stdout": 0, "stderr": 0}
    async for stream, data in command.output():
        sizes[stream] += len(data)
        assert stream == "stderr" or not data.strip(b"x")
    assert sizes == {"stdout": 20_000_000, "stderr": 4} and command.exit_code == 0


async def test_abort_ends_the_output_of_a_command_still_running(channel: Channel) -> None:
    command = sh(channel, "echo started; exec sleep 300")
    seen = []
    async for _stream, data in command.output():
        seen.append(data)
        command.abort()
    assert seen == [b"started\n"]
    assert command.exit_code is None  # it still runs: the engine has no code for it yet


async def test_a_command_cancelled_before_it_starts_never_runs(channel: Channel) -> None:
    command = sh(channel, f"touch {WS}/ran")
    assert command.cancel_start() is True
    assert await collect(command) == []
    assert command.exit_code is None
    assert await channel.stat(f"{WS}/ran") is None


async def test_a_started_command_cannot_be_cancelled_before_it_starts(channel: Channel) -> None:
    command = sh(channel, "echo hi")
    await collect(command)
    assert command.cancel_start() is False


async def test_run_returns_the_exit_code_and_both_outputs(channel: Channel) -> None:
    done = await channel.run(["sh", "-c", "echo out; echo err >&2; exit 5"], user=USER)
    assert done == Completed(exit_code=5, stdout=b"out\n", stderr=b"err\n")


async def test_spawn_returns_while_the_command_still_runs(channel: Channel) -> None:
    # The command waits for a file made only after spawn returned: a spawn that waited for
    # its command would never return.
    await channel.spawn(["sh", "-c", f"until [ -e {WS}/go ]; do sleep 0.05; done; "
                                     f"touch {WS}/done"], user=USER)
    await run_ok(channel, f"touch {WS}/go")
    await run_ok(channel, f"until [ -e {WS}/done ]; do sleep 0.05; done")


async def test_signal_init_reaches_pid_1_from_outside(
    channel: Channel, container_id: str, docker_client: Any
) -> None:
    # SIGKILL, which PID 1 can neither catch nor, sent from outside, ignore: its delivery
    # does not depend on when the init installs its handlers.
    await channel.signal_init("SIGKILL")
    assert (await asyncio.to_thread(docker_client.api.wait, container_id))["StatusCode"] == 137


# -- files ------------------------------------------------------------------------------------

TREE = [PutEntry("d", None), PutEntry("d/a.txt", b"alpha", 0o640),
        PutEntry("d/sub", None), PutEntry("d/sub/bin.dat", bytes(range(256)) * 64, 0o755)]
EXPECTED = {"d": (0o755, 1000, None), "d/a.txt": (0o640, 1000, b"alpha"),
            "d/sub": (0o755, 1000, None), "d/sub/bin.dat": (0o755, 1000, bytes(range(256)) * 64)}


async def test_put_then_get_round_trips_files_and_folders(channel: Channel) -> None:
    await channel.put_archive(WS, build_tar(TREE, uid=1000, gid=1000))
    assert await channel.get_archive(f"{WS}/d", members) == EXPECTED


async def test_a_tar_given_as_a_file_is_put_like_one_given_as_bytes(channel: Channel) -> None:
    await channel.put_archive(WS, io.BytesIO(build_tar(TREE, uid=1000, gid=1000)))
    assert await channel.get_archive(f"{WS}/d", members) == EXPECTED


async def test_get_passes_the_readers_own_errors_through(channel: Channel) -> None:
    await channel.put_archive(WS, build_tar(TREE, uid=1000, gid=1000))

    def refuse(chunks: Iterator[bytes]) -> None:
        next(chunks)
        raise FileNotFoundError("the reader's own")

    with pytest.raises(FileNotFoundError, match="the reader's own"):
        await channel.get_archive(f"{WS}/d", refuse)


async def test_a_read_that_stops_early_ends_the_transfer(channel: Channel) -> None:
    await run_ok(channel, f"head -c 30000000 /dev/zero > {WS}/big")
    first = await channel.get_archive(f"{WS}/big", lambda chunks: len(next(chunks)))
    assert 0 < first < 30_000_000
    assert (await channel.run(["true"], user=USER)).exit_code == 0  # the channel still works


async def test_stat_tells_files_folders_symlinks_and_missing_paths(channel: Channel) -> None:
    await run_ok(channel, f"cd {WS} && mkdir d && printf abc > f && ln -s f l")
    f, d, link = [await channel.stat(f"{WS}/{name}") for name in ("f", "d", "l")]
    assert f is not None and (f.path, f.kind, f.size) == (f"{WS}/f", "file", 3)
    assert d is not None and d.kind == "dir"
    assert link is not None and link.kind == "symlink"
    assert await channel.stat(f"{WS}/missing") is None


async def test_a_symlinks_target_is_fully_resolved(channel: Channel) -> None:
    await run_ok(channel, f"cd {WS} && touch f && ln -s f l && ln -s l l2 && mkdir d && "
                          "ln -s ../l2 d/l3 && ln -s /etc/passwd out")
    targets = [(await channel.stat(f"{WS}/{name}")) for name in ("l", "l2", "d/l3", "out")]
    assert [t.link_target if t else None for t in targets] == [
        f"{WS}/f", f"{WS}/f", f"{WS}/f", "/etc/passwd"]


# -- a container that is gone -----------------------------------------------------------------


async def _read_all(channel: Channel) -> None:
    await collect(sh(channel, "true"))


GONE: dict[str, Callable[[Channel], Awaitable[Any]]] = {
    "command": _read_all,
    "run": lambda ch: ch.run(["true"], user=USER),
    "spawn": lambda ch: ch.spawn(["true"], user=USER),
    "signal_init": lambda ch: ch.signal_init("SIGUSR1"),
    "put_archive": lambda ch: ch.put_archive(WS, build_tar(TREE, uid=1000, gid=1000)),
    "get_archive": lambda ch: ch.get_archive(WS, members),
    "stat": lambda ch: ch.stat(WS),
}


@pytest.mark.parametrize("operation", sorted(GONE))
async def test_every_operation_on_a_removed_container_is_sandbox_gone(
    channel: Channel, container_id: str, docker_client: Any, operation: str
) -> None:
    docker_client.api.remove_container(container_id, force=True, v=True)
    with pytest.raises(SandboxGone, match="no longer exists"):
        await GONE[operation](channel)


async def test_a_command_in_a_stopped_container_is_sandbox_gone(
    channel: Channel, container_id: str, docker_client: Any
) -> None:
    docker_client.api.kill(container_id)
    docker_client.api.wait(container_id)
    with pytest.raises(SandboxGone, match="no longer running"):
        await _read_all(channel)
