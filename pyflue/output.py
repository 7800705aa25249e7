"""Bounded capture of a command's output stream.

The first ``cap`` bytes are kept, plus the last ``cap // 8`` bytes in a ring; everything in
between is counted and dropped, so a flood never sits in memory whole. The same cap bounds what
is streamed as events.
"""

from __future__ import annotations

import codecs


class StreamCapture:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.tail_cap = max(cap // 8, 256)
        self.total = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def truncated(self) -> bool:
        return self.total > len(self._head) + len(self._tail)

    def feed(self, chunk: bytes) -> str:
        """Takes a chunk; returns the text to stream for it ('' once past the cap)."""
        self.total += len(chunk)
        room = self.cap - len(self._head)
        if room > 0:
            kept = chunk[:room]
            self._head += kept
            chunk = chunk[room:]
            text = self._decoder.decode(bytes(kept))
        else:
            text = ""
        if chunk:
            self._tail += chunk
            if len(self._tail) > self.tail_cap:
                del self._tail[: len(self._tail) - self.tail_cap]
        return text

    def text(self) -> str:
        head = bytes(self._head).decode("utf-8", "replace")
        if not self.truncated:
            return head + bytes(self._tail).decode("utf-8", "replace")
        dropped = self.total - len(self._head) - len(self._tail)
        tail = bytes(self._tail).decode("utf-8", "replace")
        return f"{head}\n[... pyflue: {dropped} bytes of output truncated ...]\n{tail}"
