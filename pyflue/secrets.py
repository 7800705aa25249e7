"""Secrets granted to a run, and their redaction from everything stored or streamed.

A workflow grants named secrets from the host environment to an agent (``"secrets": [...]`` in
its config) or to one ``harness.shell(..., secrets=[...])`` call. Granted values enter the
container only as environment variables of the commands that need them, never in a command
line. Once granted, a value is replaced by ``[REDACTED:NAME]`` in every event, log line, error,
result and shell output of the run, including a value split across two output chunks.

A value is also redacted in the encodings a command most often prints it in, without trying:
base64 (standard and URL-safe, at any alignment inside a longer encoded text, with or without
padding), hex (either case) and URL-encoding (``%XX`` and ``+`` for spaces). Other transforms
(reversed, split by a command on purpose, encrypted) are not recognised: a command that holds a
secret can always disguise it (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from pyflue.errors import ConfigError

MIN_SECRET_LENGTH = 4
# Shorter pieces of an encoded value are not redacted: they would match ordinary text.
MIN_ENCODED_LENGTH = 6


def marker(name: str) -> str:
    return f"[REDACTED:{name}]"


class Redactor:
    """The secret values of one run, and the replacement of each by its marker."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}  # value -> name

    def __bool__(self) -> bool:
        return bool(self._values)

    @property
    def longest(self) -> int:
        return max((len(v) for v in self._values), default=0)

    def add(self, name: str, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"secret {name} is shorter than {MIN_SECRET_LENGTH} characters: too short to "
                "redact reliably; use a real secret"
            )
        self._values[value] = name
        for form in encodings(value):
            self._values.setdefault(form, name)

    def split_tail(self, text: str) -> int:
        """How many characters at the end of ``text`` begin some secret without finishing it."""
        longest = 0
        for value in self._values:
            for size in range(min(len(value) - 1, len(text)), longest, -1):
                if text.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def text(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, marker(self._values[value]))
        return text

    def data(self, value: Any) -> Any:
        """``value`` with every string inside it redacted (dicts, lists, tuples)."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.data(v) for v in value)
        return value


def encodings(value: str) -> set[str]:
    """The forms of ``value`` that are redacted besides the value itself."""
    raw = value.encode("utf-8")
    forms = {raw.hex(), raw.hex().upper(),
             urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")}
    for shift in range(3):  # where the value starts in a longer text, modulo 3 bytes
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        if shift == 0:
            forms |= {encoded, encoded.rstrip("=")}
        # The characters that depend only on the value's bytes: drop those the bytes before
        # it (shift) and after it (an unfinished last group) share.
        unpadded = encoded.rstrip("=")
        head = (0, 2, 3)[shift]
        tail = 1 if (shift + len(raw)) % 3 else 0
        forms.add(unpadded[head:len(unpadded) - tail])
    forms |= {f.replace("+", "-").replace("/", "_") for f in list(forms) if _is_base64(f)}
    return {f for f in forms if len(f) >= MIN_ENCODED_LENGTH and f != value}


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class StreamRedactor:
    """Redacts a text stream chunk by chunk, holding back just enough of each chunk's end that
    a secret split across two chunks is still caught."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""

    def feed(self, chunk: str) -> str:
        if not self._redactor:
            return chunk
        text = self._redactor.text(self._pending + chunk)
        # Hold back only the end that could be the start of a secret finished by the next chunk:
        # the rest (markers whole, a trailing newline) goes out now.
        held = self._redactor.split_tail(text)
        self._pending, out = text[len(text) - held:], text[:len(text) - held]
        return out

    def flush(self) -> str:
        out, self._pending = self._redactor.text(self._pending), ""
        return out


def grant(names: Iterable[str], env: Mapping[str, str], redactor: Redactor,
          where: str) -> dict[str, str]:
    """The values of the named secrets from the host environment, registered for redaction."""
    granted: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: secret names must be non-empty strings, not {name!r}")
        if name not in env:
            raise ConfigError(
                f"{where}: secret {name} is not set in the environment of the pyflue process; "
                f"export {name}=... before starting it"
            )
        redactor.add(name, env[name])
        granted[name] = env[name]
    return granted
