"""The channel helper (pyflue/sandbox/helper/pyflue-helper.c) on its own, run here as a plain
subprocess speaking frames on its stdin/stdout: no container needed to hold it to its protocol.
The helper inside real containers is covered by tests/integration/test_channel.py."""

from __future__ import annotations

import io
import os
import select
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflue.sandbox import helper
from pyflue.sandbox.docker.frames import (
    Frame,
    FrameDecoder,
    Kind,
    encode,
    encode_exec,
    encode_path,
    encode_u32,
    parse_error,
    parse_exit,
    parse_hello,
    parse_started,
    parse_stat,
)


class Helper:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def until(self, request_id: int, kind: Kind, timeout: float = 10.0) -> list[Frame]:
        """Every frame of a request up to and including the first of ``kind``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            mine = [f for f in self.frames if f.id == request_id]
            if any(f.kind == kind for f in mine):
                self.frames = [f for f in self.frames if f.id != request_id]
                return mine
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind.name} for request {request_id}: {mine}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 1 << 16)
                assert data, "the helper ended"
                self.frames += self.decoder.feed(data)


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return helper.ensure_binary()
    except helper.BuildError as exc:
        pytest.skip(f"no helper binary on this machine: {exc}")


@pytest.fixture
def h(binary: Path) -> Iterator[Helper]:
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    running = Helper(proc)
    hello = running.until(0, Kind.HELLO)[0]
    assert parse_hello(hello.payload).pid == proc.pid
    yield running
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        assert pipe is not None
        pipe.close()


def output(frames: list[Frame], kind: Kind) -> bytes:
    return b"".join(f.payload for f in frames if f.kind == kind)


def test_a_command_streams_both_outputs_and_its_exit_code(h: Helper, tmp_path: Path) -> None:
    h.send(encode_exec(1, ["sh", "-c", "pwd; echo $X; echo err >&2; exit 7"], cwd=str(tmp_path),
                       env={"X": "from the host"}))
    frames = h.until(1, Kind.EXIT)
    assert frames[0].kind == Kind.STARTED
    assert output(frames, Kind.STDOUT) == f"{tmp_path}\nfrom the host\n".encode()
    assert output(frames, Kind.STDERR) == b"err\n"
    assert parse_exit(frames[-1].payload) == 7


def test_a_missing_program_is_127_with_the_engines_wording(h: Helper) -> None:
    h.send(encode_exec(2, ["no-such-program-xyz"], cwd="", env={}))
    frames = h.until(2, Kind.EXIT)
    assert parse_exit(frames[-1].payload) == 127
    assert b"executable file not found" in output(frames, Kind.STDERR)


def test_several_commands_run_at_once(h: Helper) -> None:
    for rid in (10, 11, 12):
        h.send(encode_exec(rid, ["sh", "-c", f"sleep 0.3; echo {rid}"], cwd="", env={}))
    started = time.monotonic()
    for rid in (10, 11, 12):
        assert output(h.until(rid, Kind.EXIT), Kind.STDOUT) == f"{rid}\n".encode()
    assert time.monotonic() - started < 2.0


def test_kill_takes_the_commands_whole_process_group(h: Helper, tmp_path: Path) -> None:
    h.send(encode_exec(3, ["sh", "-c", f"(sleep 30; touch {tmp_path}/survived) & sleep 30"],
                       cwd="", env={}))
    h.until(3, Kind.STARTED)
    h.send(encode_u32(Kind.KILL, 3, 9))
    frames = h.until(3, Kind.EXIT)
    assert parse_exit(frames[-1].payload) == 137


def test_output_beyond_the_credit_waits_for_more(h: Helper) -> None:
    h.send(encode_exec(4, ["sh", "-c", "head -c 6000000 /dev/zero"], cwd="", env={}))
    time.sleep(0.5)
    with pytest.raises(AssertionError, match="no EXIT"):
        h.until(4, Kind.EXIT, timeout=0.5)
    got = sum(len(f.payload) for f in h.frames if f.id == 4 and f.kind == Kind.STDOUT)
    assert got == 4 << 20  # the first window, and no more
    h.send(encode_u32(Kind.CREDIT, 4, 2_000_000))
    frames = h.until(4, Kind.EXIT)
    assert len(output(frames, Kind.STDOUT)) == 6_000_000


def test_files_are_written_stated_and_tarred(h: Helper, tmp_path: Path) -> None:
    h.send(encode_path(Kind.MKDIR, 20, f"{tmp_path}/d", 0o750))
    h.send(encode_path(Kind.PUT, 21, f"{tmp_path}/d/f", 0o640) + encode(Kind.DATA, 21, b"hello")
           + encode(Kind.END, 21))
    assert h.until(20, Kind.DONE)[-1].kind == Kind.DONE
    assert h.until(21, Kind.DONE)[-1].kind == Kind.DONE
    assert (tmp_path / "d" / "f").read_bytes() == b"hello"
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == 0o640
    (tmp_path / "d" / "l").symlink_to("f")
    h.send(encode_path(Kind.STAT, 22, f"{tmp_path}/d/l"))
    st = parse_stat(h.until(22, Kind.STAT_REPLY)[-1].payload)
    assert (st.kind, st.link_target) == ("symlink", f"{tmp_path}/d/f")
    h.send(encode_path(Kind.STAT, 23, f"{tmp_path}/missing"))
    assert parse_error(h.until(23, Kind.ERROR)[-1].payload)[0] == 2  # ENOENT
    h.send(encode_path(Kind.TAR, 24, f"{tmp_path}/d"))
    frames = h.until(24, Kind.EXIT)
    assert parse_exit(frames[-1].payload) == 0
    with tarfile.open(fileobj=io.BytesIO(output(frames, Kind.STDOUT))) as tar:
        found = {m.name: m for m in tar}
        assert set(found) == {"d", "d/f", "d/l"}
        data = tar.extractfile(found["d/f"])
        assert data is not None and data.read() == b"hello"
        assert found["d/l"].linkname == "f" and found["d"].mode == 0o750


def test_a_long_name_crosses_in_a_pax_header(h: Helper, tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 90) / ("y" * 90)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_bytes(b"deep")
    h.send(encode_path(Kind.TAR, 30, str(tmp_path / ("x" * 90))))
    frames = h.until(30, Kind.EXIT)
    with tarfile.open(fileobj=io.BytesIO(output(frames, Kind.STDOUT))) as tar:
        assert f"{'x' * 90}/{'y' * 90}/file.txt" in tar.getnames()


def test_a_request_id_in_use_is_refused_and_a_garbage_frame_ends_the_helper(h: Helper) -> None:
    h.send(encode_exec(40, ["sleep", "5"], cwd="", env={}))
    h.until(40, Kind.STARTED)
    h.send(encode_exec(40, ["true"], cwd="", env={}))
    assert parse_error(h.until(40, Kind.ERROR)[-1].payload)[0] == 16  # EBUSY
    h.send(b"\xff" * 12)
    assert h.proc.wait(timeout=5) != 0  # it refuses to guess, and ends


def shell_exec(request_id: int, command: str, cwd: Path, env: dict[str, str]) -> bytes:
    return encode_exec(request_id, ["/bin/bash", "-c", command, "pyflue-shell"], cwd=str(cwd),
                       env=env, shell=True)


def test_the_spare_shell_runs_the_next_shell_command_with_the_same_folder_and_env(
    h: Helper, tmp_path: Path
) -> None:
    h.send(shell_exec(50, "exit 2", tmp_path, {"A": "1"}))
    assert not parse_started(h.until(50, Kind.STARTED)[0].payload).spare
    assert parse_exit(h.until(50, Kind.EXIT)[-1].payload) == 2
    h.send(shell_exec(51, 'echo "$0 $A $PWD"; exit 3', tmp_path, {"A": "1"}))
    frames = h.until(51, Kind.EXIT)
    assert parse_started(frames[0].payload).spare
    assert output(frames, Kind.STDOUT) == f"pyflue-shell 1 {tmp_path}\n".encode()
    assert parse_exit(frames[-1].payload) == 3
    h.send(shell_exec(52, "echo $A", tmp_path, {"A": "2"}))  # another env: a fresh shell
    frames = h.until(52, Kind.EXIT)
    assert not parse_started(frames[0].payload).spare and output(frames, Kind.STDOUT) == b"2\n"


def test_a_shell_request_that_is_not_bash_c_command_name_is_refused(h: Helper) -> None:
    body = b"/\0/bin/bash\0-x\0true\0sh\0"
    h.send(encode(Kind.EXEC, 53, struct.pack(">BB2xII", 0, 1, 4, 0) + body))
    assert parse_error(h.until(53, Kind.ERROR)[-1].payload)[0] == 22  # EINVAL
    h.send(encode(Kind.EXEC, 54, struct.pack(">BB2xII", 0, 2, 1, 0) + b"/\0true\0"))
    assert parse_error(h.until(54, Kind.ERROR)[-1].payload)[0] == 22  # an unknown flag
