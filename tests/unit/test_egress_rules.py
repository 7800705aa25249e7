"""Egress policy: the agent's list, the server's maximum, addresses the proxy refuses, the
secret swap. The proxy against real containers: tests/integration/test_egress.py."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest

from pyflue.agent_config import AgentConfig
from pyflue.egress.proxy import _sni, _swap
from pyflue.egress.rules import Rule, address_refusal, allowed, parse_rule, parse_rules, within
from pyflue.egress.tls import RunCA
from pyflue.errors import ConfigError
from pyflue.events import EgressEvent, parse_event
from pyflue.render import pretty_event
from pyflue.sandbox.base import EgressSecret
from pyflue.sandbox.docker.pool import pool_key
from pyflue.sandbox.policy import placeholder, spec_for
from pyflue.settings import SandboxDefaults


def _spec(defaults: SandboxDefaults, **asks: Any) -> Any:
    config = AgentConfig.parse(asks, where="test agent")
    return spec_for(config, defaults, run_id="workflow:w:1", workflow="w", image_override=None)


SERVER = SandboxDefaults(max_egress=["*.example.com", "pypi.example.org"])


def test_a_wildcard_matches_subdomains_but_not_the_bare_name() -> None:
    rule = Rule("*.example.com")
    assert rule.matches("a.example.com") and rule.matches("B.a.Example.com.")
    assert not rule.matches("example.com") and not rule.matches("badexample.com")
    assert Rule("api.example.com").matches("API.example.com")


def test_ports_other_than_80_and_443_are_refused_with_the_reason() -> None:
    assert parse_rule("git.example.com:443", where="w") == Rule("git.example.com")
    with pytest.raises(ConfigError, match=r"port 22.*HTTP and HTTPS only"):
        parse_rule("git.example.com:22", where="w")
    assert allowed((Rule("a.example.com"),), "a.example.com", 443)
    assert not allowed((Rule("a.example.com"),), "a.example.com", 8080)


@pytest.mark.parametrize("bad", ["10.0.0.1", "[::1]", "exa mple.com", "*example.com",
                                 "a.*.com", "-a.com", "", 3])
def test_entries_that_are_not_host_names_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="egress"):
        parse_rule(bad, where="w")


def test_the_servers_maximum_covers_names_and_narrower_wildcards_only() -> None:
    maximum = parse_rules(["*.example.com", "pypi.example.org"], where="m", server=True)
    within(parse_rules(["a.example.com", "*.git.example.com", "pypi.example.org"], where="a"),
           maximum, "SETTING")
    with pytest.raises(ConfigError, match=r"'example.com', beyond what this server allows"):
        within(parse_rules(["example.com"], where="a"), maximum, "SETTING")
    with pytest.raises(ConfigError, match="beyond"):
        within(parse_rules(["*.example.org"], where="a"), maximum, "SETTING")
    within(parse_rules(["*.anything.net"], where="a"), parse_rules(["*"], where="m",
                                                                   server=True), "SETTING")


def test_egress_is_off_unless_the_server_sets_a_maximum() -> None:
    with pytest.raises(ConfigError, match=r"egress is off on this server.*MAX_EGRESS"):
        _spec(SandboxDefaults(), egress=["a.example.com"])


def test_without_egress_the_container_keeps_network_none_and_may_be_pooled() -> None:
    spec = _spec(SERVER)
    assert spec.network == "none" and spec.egress == ()
    assert pool_key(spec) is not None


def test_an_egress_run_takes_only_an_egress_pooled_container_whatever_its_names() -> None:
    spec = _spec(SERVER, egress=["a.example.com"])
    assert spec.egress == ("a.example.com",) and spec.network == "none"
    other_names = _spec(SERVER, egress=["b.example.com"])
    assert pool_key(spec) is not None and pool_key(spec) == pool_key(other_names)
    assert pool_key(spec) != pool_key(_spec(SERVER))


def test_a_run_with_egress_secrets_is_never_served_from_the_pool() -> None:
    spec = dataclasses.replace(_spec(SERVER, egress=["a.example.com"]),
                               egress_secrets=(EgressSecret(name="T", hosts=("a.example.com",),
                                                            placeholder="p", value="v"),))
    assert pool_key(spec) is None


def test_egress_with_the_bridge_network_or_gvisor_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="egress and network 'bridge'"):
        _spec(SERVER, egress=["a.example.com"], network="bridge")
    with pytest.raises(ConfigError, match="not available under runsc"):
        _spec(SERVER, egress=["a.example.com"], runtime="runsc")


def test_egress_secrets_must_name_exact_hosts_of_the_egress_list() -> None:
    _spec(SERVER, egress=["api.example.com"], egress_secrets={"TOKEN": ["api.example.com"]})
    with pytest.raises(ConfigError, match="not an exact name in the agent's \"egress\""):
        _spec(SERVER, egress=["api.example.com"], egress_secrets={"TOKEN": ["b.example.com"]})
    with pytest.raises(ConfigError, match="needs \"egress\""):
        _spec(SERVER, egress_secrets={"TOKEN": ["api.example.com"]})
    with pytest.raises(ConfigError, match="not an environment variable name"):
        _spec(SERVER, egress=["api.example.com"], egress_secrets={"A-B": ["api.example.com"]})


def test_the_server_refuses_a_maximum_that_is_not_host_names() -> None:
    with pytest.raises(ValueError, match=r"MAX_EGRESS.*10.0.0.1"):
        SandboxDefaults(max_egress=["10.0.0.1"])
    with pytest.raises(ValueError, match="not a network"):
        SandboxDefaults(egress_allow_networks=["nope"])


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("10.1.2.3", "private"), ("192.168.1.1", "private"),
    ("172.16.5.5", "private"), ("100.64.0.1", "carrier-grade NAT"), ("0.0.0.0", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("fd00::1", "private"), ("224.0.0.1", "multicast"),
])
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) == why


def test_allowed_networks_open_a_range_but_never_a_run_network() -> None:
    test_net = ipaddress.ip_network("172.30.0.0/16")
    address = ipaddress.ip_address("172.30.0.5")
    assert address_refusal(address, (test_net,)) is None
    assert address_refusal(address, (test_net,), never=(test_net,)) == "a pyflue run network"
    assert address_refusal(ipaddress.ip_address("172.31.0.5"), (test_net,)) == "private"


def test_the_placeholder_is_swapped_in_headers_and_basic_credentials() -> None:
    secret = EgressSecret(name="T", hosts=("a",), placeholder=placeholder("r", "T"),
                          value="the-value")
    assert "the-value" not in repr(secret)
    assert _swap(f"Bearer {secret.placeholder}", secret) == ("Bearer the-value", True)
    basic = base64.b64encode(f"user:{secret.placeholder}".encode()).decode()
    swapped, hit = _swap(f"Basic {basic}", secret)
    assert hit and base64.b64decode(swapped.split()[1]) == b"user:the-value"
    assert _swap("Bearer other", secret) == ("Bearer other", False)


def test_the_sni_of_a_real_client_hello_is_read() -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="Files.Example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert _sni(outgoing.read()) == "files.example.com"
    assert _sni(b"\x16\x03\x01\x00\x05hello") is None


def test_pyflue_logs_shows_an_egress_attempt_on_one_line() -> None:
    event = parse_event({"run_id": "r", "event_index": 7, "type": "egress",
                         "timestamp": "2026-01-01T00:00:00Z",
                         "data": {"host": "other.example.com", "port": 443, "method": "CONNECT",
                                  "decision": "denied", "reason": "not in the allow-list"}})
    assert isinstance(event, EgressEvent)
    line = pretty_event(event) or ""
    assert line.endswith("egress CONNECT other.example.com:443 denied (not in the allow-list) "
                         "↑0 ↓0 B 0 ms")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake in memory, between ``client`` asking for ``name`` and ``server``."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_c = client.wrap_bio(c_in, c_out, server_hostname=name)
    tls_s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for tls, out, peer_in in ((tls_c, c_out, s_in), (tls_s, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            peer_in.write(out.read())
    assert tls_c.version() is not None


def test_a_runs_ca_is_trusted_for_its_hosts_and_refuses_another_sni(tmp_path: Path) -> None:
    ca = RunCA("workflow:w:01JTEST")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle(system=tmp_path / "none"))
    client = ssl.create_default_context(cafile=str(bundle))
    _handshake(ca.server_context("api.example.com"), client, "api.example.com")
    with pytest.raises(ssl.SSLError):
        _handshake(ca.server_context("api.example.com"), client, "other.example.com")
    other = ssl.create_default_context(cafile=str(bundle))
    with pytest.raises(ssl.SSLCertVerificationError):  # another run's CA is not this one
        _handshake(RunCA("workflow:w:02").server_context("api.example.com"), other,
                   "api.example.com")
