"""Egress rules: which host names a run may reach, and which addresses the proxy may connect to.

Pure logic, no sockets: the agent's ``"egress"`` list is parsed here (exact names and ``*.``
suffix patterns, ports 80 and 443 only), checked against the server's maximum
(``PYFLUE_SANDBOX_MAX_EGRESS``), and the proxy asks :func:`allowed` of each request and
:func:`address_refusal` of each address a name resolves to. See docs/sandbox.md#egress.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyflue.errors import ConfigError

PORTS = (80, 443)  # the only ports egress carries: HTTP (absolute URI) and HTTPS (CONNECT)
ANY = "*"  # in the server's maximum only: any name

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# Carrier-grade NAT (RFC 6598): neither private nor global to Python's ipaddress.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Rule:
    """One allowed name: exact (``files.example.com``) or a suffix (``*.example.com``, which
    matches ``a.example.com`` and ``b.a.example.com``, not ``example.com`` itself)."""

    pattern: str

    @property
    def wildcard(self) -> bool:
        return self.pattern.startswith("*.")

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.pattern == ANY:
            return True
        if self.wildcard:
            return host.endswith(self.pattern[1:])
        return host == self.pattern

    def covers(self, other: Rule) -> bool:
        """Whether every name ``other`` matches is matched by this rule too."""
        if self.pattern == ANY:
            return True
        if other.pattern == ANY:
            return False
        if other.wildcard:
            return self.wildcard and other.pattern[1:].endswith(self.pattern[1:])
        return self.matches(other.pattern)


def parse_rule(text: object, *, where: str, server: bool = False) -> Rule:
    """A rule from ``index.example.com``, ``*.example.com`` or (ports 80/443 only)
    ``example.com:443``; ConfigError naming what to write otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: egress entries are host names like index.example.com, "
                          f"not {text!r}")
    name = text.strip().lower().rstrip(".")
    if server and name == ANY:
        return Rule(ANY)
    name, port = _split_port(name, text, where)
    if port is not None and port not in PORTS:
        raise ConfigError(
            f"{where}: egress {text!r} asks for port {port}: the egress proxy carries HTTP and "
            f"HTTPS only (ports {PORTS[0]} and {PORTS[1]}), so other ports (ssh, databases) "
            "are refused; use the host's HTTPS endpoint (e.g. git over https)"
        )
    if _is_address(name):
        raise ConfigError(f"{where}: egress {text!r} is an address: egress allows host names "
                          "(the proxy resolves them itself), not addresses")
    bare = name[2:] if name.startswith("*.") else name
    if not _NAME.match(bare) or "*" in bare:
        raise ConfigError(f"{where}: egress {text!r} is not a host name: write it like "
                          "index.example.com or *.example.com")
    return Rule(name)


def parse_rules(entries: Iterable[object], *, where: str, server: bool = False) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for entry in entries:
        rule = parse_rule(entry, where=where, server=server)
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)


def within(asked: Sequence[Rule], maximum: Sequence[Rule], setting: str) -> None:
    """ConfigError unless each asked rule is covered by the server's maximum."""
    if asked and not maximum:
        raise ConfigError(
            f"the agent asks for egress to {', '.join(r.pattern for r in asked)}, but egress is "
            f"off on this server ({setting} is empty); set {setting} to the names agents may "
            'reach, e.g. ["index.example.com", "*.git.example.com"]'
        )
    for rule in asked:
        if not any(m.covers(rule) for m in maximum):
            raise ConfigError(
                f"the agent asks for egress to {rule.pattern!r}, beyond what this server allows "
                f"({', '.join(m.pattern for m in maximum)}; {setting}); ask for less, or add "
                "the name to the server's maximum"
            )


def allowed(rules: Sequence[Rule], host: str, port: int) -> bool:
    return port in PORTS and any(r.matches(host) for r in rules)


def address_refusal(address: Address, allow: Sequence[Network],
                    never: Sequence[Network] = ()) -> str | None:
    """Why the proxy must not connect to ``address`` (None when it may): loopback,
    link-local (cloud metadata), private, carrier-grade NAT and other non-global addresses
    are refused unless a network in ``allow`` (PYFLUE_SANDBOX_EGRESS_ALLOW_NETWORKS) holds
    them; addresses in ``never`` (the runs' own networks) are refused always."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in never):
        return "a pyflue run network"
    if any(address in net for net in allow):
        return None
    for kind, test in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                       ("carrier-grade NAT", address in _CGNAT),
                       ("private", address.is_private), ("multicast", address.is_multicast),
                       ("unspecified", address.is_unspecified)):
        if test:
            return kind
    return None if address.is_global else "not a public"


def parse_networks(entries: Iterable[str], *, where: str) -> tuple[Network, ...]:
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{where}: {entry!r} is not a network; write it like "
                              "172.30.0.0/16") from None
    return tuple(nets)


def _split_port(name: str, text: str, where: str) -> tuple[str, int | None]:
    if name.count(":") != 1:
        return name, None
    host, _, port = name.partition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: egress {text!r} has no valid port; write it like "
                          "example.com or example.com:443")
    return host, int(port)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
