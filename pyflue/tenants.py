"""Who may call the server: named tokens, their tenants, and each tenant's quota.

A token file (``PYFLUE_TOKENS_FILE``) is a JSON list of entries::

    [{"name": "ci-team-a", "sha256": "<hex sha256 of the token>", "tenant": "team-a",
      "admin": false, "max_concurrency": 2}]

Tokens are never stored in plaintext: the file holds their SHA-256 (``pyflue token hash``
prints it), and a presented token is hashed and compared against every entry's digest with
:func:`hmac.compare_digest`, so the comparison takes the same time whichever entry (if any)
matches. ``PYFLUE_API_TOKEN`` is one more entry: name ``api-token``, tenant ``default``, admin.

A caller belongs to a tenant. The runs it creates carry its tenant and its token's name; a
non-admin caller sees only its tenant's runs (see :mod:`pyflue.api.auth`). ``max_concurrency``
caps how many runs of the tenant execute at once (the tokens of one tenant must agree on it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflue.errors import ConfigError

DEFAULT_TENANT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {"name", "sha256", "tenant", "admin", "max_concurrency"}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the token's ``name`` (None: no token is configured, or a public
    route), its ``tenant``, and whether it is an ``admin`` (sees every tenant's runs)."""

    name: str | None
    tenant: str
    admin: bool

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see a run of ``tenant``."""
        return self.admin or tenant == self.tenant


# Every caller of a server without any token (loopback only, see docs/server.md).
OPEN = Caller(name=None, tenant=DEFAULT_TENANT, admin=True)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    digest: bytes  # the sha256 of the token
    tenant: str
    admin: bool = False
    max_concurrency: int | None = None


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token, as a token file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


class Tokens:
    """The tokens a server accepts. Empty: no token is configured, every caller is
    :data:`OPEN`."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self.entries = entries
        self.limits: dict[str, int] = {}
        for entry in entries:
            if entry.max_concurrency is None:
                continue
            known = self.limits.setdefault(entry.tenant, entry.max_concurrency)
            if known != entry.max_concurrency:
                raise ConfigError(
                    f"token {entry.name!r}: tenant {entry.tenant!r} has max_concurrency "
                    f"{known} in another entry and {entry.max_concurrency} here; give every "
                    "token of a tenant the same limit (or null on all but one)")

    @property
    def configured(self) -> bool:
        return bool(self.entries)

    @property
    def multi_tenant(self) -> bool:
        """Whether tenants matter to admission: several tenants, or a quota."""
        return len({e.tenant for e in self.entries}) > 1 or bool(self.limits)

    def identify(self, token: str) -> Caller | None:
        """The caller a presented token stands for; None for an unknown (or empty) token.
        Every entry is compared, in constant time, whatever matches."""
        given = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(given, entry.digest) and found is None:
                found = entry
        if found is None or not token:
            return None
        return Caller(name=found.name, tenant=found.tenant, admin=found.admin)

    @classmethod
    def load(cls, api_token: str | None, tokens_file: Path | None) -> Tokens:
        """The tokens of ``PYFLUE_API_TOKEN`` and ``PYFLUE_TOKENS_FILE``. ConfigError naming
        the entry for a file that cannot be used."""
        entries: list[TokenEntry] = []
        if api_token:
            entries.append(TokenEntry(name="api-token", tenant=DEFAULT_TENANT, admin=True,
                                      digest=hashlib.sha256(api_token.encode()).digest()))
        if tokens_file is not None:
            entries += read_tokens_file(tokens_file)
        names = [e.name for e in entries]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"PYFLUE_TOKENS_FILE {tokens_file}: two tokens are named "
                                  f"{name!r}; give each its own name")
        return cls(entries)


def read_tokens_file(path: Path) -> list[TokenEntry]:
    """The entries of a token file; ConfigError naming the file and the entry."""
    where = f"PYFLUE_TOKENS_FILE {path}"
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}; point it at a readable "
                          "JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc}); it holds a list of "
                          '{"name", "sha256", "tenant", "admin", "max_concurrency"}') from None
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must hold a JSON list of token entries, not "
                          f"{type(raw).__name__}")
    return [_entry(f"{where}: entry {i + 1}", item) for i, item in enumerate(raw)]


def _entry(where: str, item: Any) -> TokenEntry:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object with name, sha256 and tenant")
    name = item.get("name")
    if isinstance(name, str):
        where = f"{where} ({name!r})"
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(_FIELDS))}")
    for field in ("name", "tenant"):
        value = item.get(field)
        if not isinstance(value, str) or not _NAME.match(value):
            raise ConfigError(f"{where}: {field!r} must be a name of letters, digits and "
                              "_.@:- (up to 100), not " + json.dumps(value))
    digest = item.get("sha256")
    if not isinstance(digest, str) or not _DIGEST.match(digest.lower()):
        raise ConfigError(f"{where}: 'sha256' must be the 64 hex digits of the token's "
                          "SHA-256 (`pyflue token hash` prints it), never the token itself")
    admin = item.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}: 'admin' must be true or false")
    limit = item.get("max_concurrency")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ConfigError(f"{where}: 'max_concurrency' must be a positive integer or null")
    return TokenEntry(name=item["name"], tenant=item["tenant"], admin=admin, max_concurrency=limit,
                      digest=bytes.fromhex(digest))


@dataclass(frozen=True)
class Queued:
    """A queued run as fair admission sees it."""

    run_id: str
    tenant: str


def fair_pick(queued: list[Queued], active: dict[str, int], limits: dict[str, int],
              free: int) -> list[str]:
    """Which queued runs (given oldest first) to admit into ``free`` slots, fairly across
    tenants: each slot goes to the tenant with the fewest runs executing (``active``, counted
    on as runs are picked), ties to the one whose next run is oldest; a tenant at its limit
    is passed over. So a tenant with a long backlog cannot starve one that queues later."""
    waiting: dict[str, list[str]] = {}
    position: dict[str, int] = {}
    for i, run in enumerate(queued):
        waiting.setdefault(run.tenant, []).append(run.run_id)
        position.setdefault(run.run_id, i)
    counts = dict(active)
    picked: list[str] = []
    while len(picked) < free:
        eligible = [t for t, runs in waiting.items()
                    if runs and counts.get(t, 0) < limits.get(t, free + counts.get(t, 0) + 1)]
        if not eligible:
            break
        tenant = min(eligible, key=lambda t: (counts.get(t, 0), position[waiting[t][0]]))
        picked.append(waiting[tenant].pop(0))
        counts[tenant] = counts.get(tenant, 0) + 1
    return picked
