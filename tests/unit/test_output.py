from __future__ import annotations

from pyflue.output import StreamCapture


def test_output_under_the_cap_is_kept_whole_and_streamed() -> None:
    cap = StreamCapture(1024)
    assert cap.feed(b"hello ") == "hello "
    assert cap.feed(b"world") == "world"
    assert cap.text() == "hello world"
    assert not cap.truncated


def test_output_past_the_cap_keeps_head_and_tail_with_a_marker() -> None:
    cap = StreamCapture(1024)
    streamed = "".join(cap.feed(bytes([65 + i % 26]) * 100) for i in range(100))
    assert len(streamed) == 1024
    assert cap.truncated and cap.total == 10_000
    text = cap.text()
    assert text.startswith("A" * 100)
    assert "bytes of output truncated" in text
    assert text.endswith("V" * 100)  # the last chunk (index 99 -> 'V') survives in the tail
    assert len(text) < 1024 + 256 + 100


def test_split_utf8_sequences_are_decoded_across_chunks() -> None:
    cap = StreamCapture(1024)
    data = "héllo ✓".encode()
    assert cap.feed(data[:2]) + cap.feed(data[2:]) == "héllo ✓"
