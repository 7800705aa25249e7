"""The helper channel's frame codec (pyflue/sandbox/docker/frames.py): what it writes, and its
strict reading of what comes from the container (untrusted bytes)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflue.sandbox.docker.frames import (
    HEADER,
    MAX_FRAME,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode,
    encode_exec,
    encode_path,
    parse_error,
    parse_exit,
    parse_hello,
    parse_started,
    parse_stat,
)

REPLY_KINDS = [k for k in Kind if k >= 0x80]


def test_a_frame_is_its_header_and_payload() -> None:
    assert encode(Kind.STDOUT, 7, b"hi") == b"\0\0\0\x02\x83\0\0\0\0\0\0\x07hi"


@given(st.lists(st.tuples(st.sampled_from(REPLY_KINDS), st.integers(0, 2**32 - 1),
                          st.binary(max_size=300)), max_size=20),
       st.integers(1, 50))
def test_frames_cut_anywhere_decode_to_the_same_frames(
    frames: list[tuple[Kind, int, bytes]], step: int
) -> None:
    stream = b"".join(encode(k, i, p) for k, i, p in frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start in range(0, len(stream), step):
        got += decoder.feed(stream[start:start + step])
    assert [(f.kind, f.id, f.payload) for f in got] == frames


@pytest.mark.parametrize("header", [
    HEADER.pack(MAX_FRAME + 1, Kind.STDOUT, 1),          # oversized
    HEADER.pack(1, 0x42, 1),                             # unknown type
    HEADER.pack(1, Kind.EXEC, 1),                        # a request, from the container
    struct.pack(">IBBBBI", 1, Kind.STDOUT, 0, 1, 0, 1),  # padding not zero
    b"OCI runtime exec failed: exec",                    # text instead of frames
])
def test_a_header_that_cannot_be_trusted_breaks_the_decoder_for_good(header: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="garbage"):
        decoder.feed(header + b"x")
    with pytest.raises(FrameError):
        decoder.feed(encode(Kind.DONE, 1))  # no resynchronising on a broken stream


@given(st.binary(max_size=200))
def test_any_bytes_give_frames_or_a_frame_error_never_anything_else(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for frame in decoder.feed(data):
            assert len(frame.payload) <= MAX_FRAME
    except FrameError:
        pass


def test_a_large_declared_length_is_not_allocated_up_front() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(HEADER.pack(MAX_FRAME, Kind.STDOUT, 1) + b"abc") == []


@pytest.mark.parametrize(("parse", "payload"), [
    (parse_hello, b"\0" * 15),
    (parse_exit, b"\0\0\0"),
    (parse_exit, struct.pack(">I", 100_000)),
    (parse_error, b"\0\0"),
    (parse_stat, b"\0" * 31),
    (parse_stat, struct.pack(">BB2xIQqI4x", 9, 0, 0, 0, 0, 0)),           # unknown kind
    (parse_stat, struct.pack(">BB2xIQqI4x", 0, 0, 0, 0, 0, 0) + b"/x"),   # target on a file
    (parse_stat, struct.pack(">BB2xIQqI4x", 0, 0, 0, 0, 0, 10**9)),       # nanoseconds
    (parse_started, b"\0" * 4),
    (parse_started, struct.pack(">II", 7, 2)),                             # unknown flag
])
def test_a_payload_that_does_not_fit_its_type_is_refused(parse: object, payload: bytes) -> None:
    with pytest.raises(FrameError):
        parse(payload)  # type: ignore[operator]


def test_a_stat_reply_reads_back() -> None:
    payload = struct.pack(">BB2xIQqI4x", 2, 0, 0o120777, 4, 1_700_000_000, 5) + b"/workspace/f"
    st_ = parse_stat(payload)
    assert (st_.kind, st_.size, st_.link_target, st_.resolved) == ("symlink", 4, "/workspace/f",
                                                                  True)
    assert st_.mtime_ns == 1_700_000_000 * 10**9 + 5


def test_requests_refuse_what_cannot_cross_as_c_strings() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_exec(1, ["echo", "a\0b"], cwd="/", env={})
    with pytest.raises(ValueError, match="environment variable name"):
        encode_exec(1, ["true"], cwd="/", env={"A=B": "c"})
    with pytest.raises(ValueError, match="invalid path"):
        encode_path(Kind.STAT, 1, "")
    with pytest.raises(FrameError, match="over"):
        encode(Kind.DATA, 1, b"x" * (MAX_FRAME + 1))


def test_a_started_reply_says_whether_the_spare_shell_ran_the_command() -> None:
    started = parse_started(struct.pack(">II", 42, 1))
    assert (started.pid, started.spare) == (42, True)
    assert not parse_started(struct.pack(">II", 42, 0)).spare


def test_a_shell_request_is_bash_c_command_name_and_not_detached() -> None:
    head = encode_exec(1, ["/bin/bash", "-c", "true", "sh"], cwd="/", env={}, shell=True)[12:24]
    assert head == struct.pack(">BB2xII", 0, 1, 4, 0)
    for argv, detached in ((["/bin/bash", "-c", "true"], False),
                           (["/bin/bash", "-x", "true", "sh"], False),
                           (["/bin/bash", "-c", "true", "sh"], True)):
        with pytest.raises(ValueError, match="shell EXEC"):
            encode_exec(1, argv, cwd="/", env={}, shell=True, detached=detached)
