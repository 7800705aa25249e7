"""Egress by allow-list against the real engine, proven from inside the sandbox.

Every target is a test host this module starts (containers on a Docker network it creates,
named ``*.egress.test`` through a hosts file the proxy reads) or this machine's loopback: never
a public or foreign address."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyflue.engine_watch import EngineState
from pyflue.events import EventType
from pyflue.models import RunStatus, utcnow
from pyflue.runs import Runner
from pyflue.sandbox.docker import DockerProvider
from pyflue.settings import PoolSettings, SandboxDefaults, Settings
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow
from tests.integration.egress_hosts import INDEX_PACKAGE, INDEX_VERSION, EgressHosts, egress_hosts

pytestmark = pytest.mark.docker

ALLOWED, OTHER, GIT, LOOP = ("allowed.egress.test", "other.egress.test", "repo.git.egress.test",
                             "loop.egress.test")
SECRET = "s3cr3t-value-for-egress-tests"


@pytest.fixture(scope="module")
def hosts(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressHosts]:
    folder = tmp_path_factory.mktemp("egress-hosts")
    with egress_hosts(docker_client, folder, [ALLOWED, OTHER, GIT]) as found:
        with found.hosts_file.open("a") as f:
            f.write(f"127.0.0.1 {LOOP}\n")  # allowed by name, refused by address
        yield found


@pytest.fixture
async def egress_runner(settings: Settings, hosts: EgressHosts) -> AsyncIterator[Runner]:
    sandbox = SandboxDefaults(kill_grace=2.0, max_egress=["*.egress.test"],
                              egress_allow_networks=[hosts.subnet],
                              egress_hosts_file=hosts.hosts_file, egress_ca_file=hosts.ca)
    async with open_runner(settings.model_copy(update={"sandbox": sandbox})) as runner:
        runner.env = {"API_TOKEN": SECRET}
        yield runner


SHELL_WORKFLOW = """
from pyflue import create_agent
agent = create_agent(lambda ctx: ctx.payload["agent"])
async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("ca.pem", ctx.payload["ca"])
    out = {}
    for name, command in ctx.payload["commands"].items():
        r = await h.shell(command, timeout=60)
        out[name] = {"out": r["stdout"], "err": r["stderr"], "code": r["exit_code"],
                     "ms": r["duration_ms"]}
    return out
"""


async def _shell(runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts,
                 agent: dict[str, Any], commands: dict[str, str]) -> tuple[Any, list[Any]]:
    write_workflow("egress_shell", SHELL_WORKFLOW)
    run = await runner.run("egress_shell", {"agent": agent, "ca": hosts.ca.read_text(),
                                            "commands": commands})
    assert run.status is RunStatus.completed, run.error
    events = await runner.store.list_events(run.run_id)
    return run.result, events


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _egress(events: list[Any]) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.type is EventType.egress]


async def test_an_allowed_host_answers_curl_over_http_and_https_and_git_clones_over_https(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    result, events = await _shell(egress_runner, write_workflow, hosts,
                                  {"egress": [ALLOWED, "*.git.egress.test"]}, {
        "http": f"curl -sS http://{ALLOWED}/hello",
        "https": f"curl -sS --cacert ca.pem https://{ALLOWED}/secure",
        "git": f"git -c http.sslCAInfo=$PWD/ca.pem clone -q https://{GIT}/repo.git r "
               "&& cat r/README",
    })
    assert json.loads(result["http"]["out"])["host"] == ALLOWED, result
    assert json.loads(result["https"]["out"])["path"] == "/secure", result
    assert result["git"]["out"] == "hello\n", result
    audit = _egress(events)
    assert {(a["method"], a["host"], a["port"], a["decision"]) for a in audit} >= {
        ("GET", ALLOWED, 80, "allowed"), ("CONNECT", ALLOWED, 443, "allowed"),
        ("CONNECT", GIT, 443, "allowed")}
    https = next(a for a in audit if a["method"] == "CONNECT" and a["host"] == ALLOWED)
    assert https["address"] == hosts.addresses[ALLOWED]
    assert https["bytes_up"] > 0 and https["bytes_down"] > 0


PIP_WORKFLOW = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"egress": [ctx.payload["host"]]})
async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("ca.pem", ctx.payload["ca"])
    await h.fs.upload(ctx.payload["pip"], "vendor/pip")
    return await h.shell(ctx.payload["command"], env={"PYTHONPATH": "vendor"}, timeout=120)
"""


@pytest.fixture(scope="module")
def pip_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This venv's pip, pure Python, to run inside the sandbox image (which has python3, no
    pip): the client under test is the real pip."""
    import pip

    dest = tmp_path_factory.mktemp("pip") / "pip"
    shutil.copytree(Path(pip.__file__).parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


async def test_pip_installs_from_a_local_index_on_an_allowed_host(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts, pip_copy: Path
) -> None:
    write_workflow("egress_pip", PIP_WORKFLOW)
    command = (f"python3 -m pip install --no-cache-dir --disable-pip-version-check "
               f"--no-input --cert ca.pem --index-url https://{ALLOWED}/simple/ "
               f"--target site {INDEX_PACKAGE}=={INDEX_VERSION} "
               f"&& PYTHONPATH=site python3 -c 'import {INDEX_PACKAGE} as m; print(m.GREETING)'")
    run = await egress_runner.run("egress_pip", {"host": ALLOWED, "ca": hosts.ca.read_text(),
                                                 "pip": str(pip_copy), "command": command})
    assert run.status is RunStatus.completed, run.error
    assert run.result["exit_code"] == 0, run.result["stderr"]
    assert run.result["stdout"].splitlines()[-1] == "installed through the egress proxy"
    audit = _egress(await egress_runner.store.list_events(run.run_id))
    assert audit and {(a["method"], a["host"], a["port"], a["decision"]) for a in audit} == {
        ("CONNECT", ALLOWED, 443, "allowed")}, audit


async def test_a_host_not_in_the_list_gets_a_403_that_names_the_list(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    result, events = await _shell(egress_runner, write_workflow, hosts, {"egress": [ALLOWED]}, {
        "http": f"curl -sS -w ' %{{http_code}}' http://{OTHER}/",
        "https": f"curl -sS --cacert ca.pem https://{OTHER}/ 2>&1; echo; "
                 f"curl -s -o /dev/null -w '%{{http_connect}}' --cacert ca.pem https://{OTHER}/",
    })
    assert result["http"]["out"].endswith(" 403"), result
    assert f"This run may reach: {ALLOWED}" in result["http"]["out"]
    assert '"egress" list' in result["http"]["out"]
    assert result["https"]["out"].endswith("403"), result
    assert [(a["method"], a["host"], a["decision"], a["reason"]) for a in _egress(events)] == [
        ("GET", OTHER, "denied", "not in the allow-list")] + [
        ("CONNECT", OTHER, "denied", "not in the allow-list")] * 2


async def test_every_way_around_the_proxy_fails_and_proxy_attempts_are_audited(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    ip = hosts.addresses[ALLOWED]
    py_connect = ("python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], "
                  "int(sys.argv[2])), 1)' ")
    sni = ("python3 - <<'EOF'\n"
           "import os, socket, ssl\n"
           "host, port = os.environ['HTTPS_PROXY'].split('//')[1].split(':')\n"
           "s = socket.create_connection((host, int(port)), 5)\n"
           f"s.sendall(b'CONNECT {ALLOWED}:443 HTTP/1.1\\r\\nHost: {ALLOWED}:443\\r\\n\\r\\n')\n"
           "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
           "ctx = ssl.create_default_context(cafile='ca.pem')\n"
           "try:\n"
           f"    ctx.wrap_socket(s, server_hostname='{OTHER}')\n"
           "    print('handshake done')\n"
           "except (OSError, ssl.SSLError) as e:\n"
           "    print('refused')\n"
           "EOF")
    result, events = await _shell(egress_runner, write_workflow, hosts,
                                  {"egress": [ALLOWED, LOOP]}, {
        "dns": f"getent hosts {ALLOWED}",
        "raw_ip_via_proxy": f"curl -s -o /dev/null -w '%{{http_code}}' http://{ip}/",
        "raw_ip_direct": f"{py_connect} {ip} 80",
        "other_port": f"curl -s -o /dev/null -w '%{{http_code}}' http://{ALLOWED}:8080/",
        "loopback_name": f"curl -s -o /dev/null -w '%{{http_code}}' http://{LOOP}/",
        "host_mismatch": f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {OTHER}' "
                         f"http://{ALLOWED}/",
        "udp": f"python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
               f" s.settimeout(1); s.sendto(b\"x\", (\"{ip}\", 53)); s.recv(10)'",
        "ipv6": "cat /proc/sys/net/ipv6/conf/all/disable_ipv6; cat /proc/net/if_inet6",
        "raw_socket": "python3 -c 'import socket; socket.socket(socket.AF_INET, "
                      "socket.SOCK_RAW, socket.IPPROTO_ICMP)'",
        "gateway": f"{py_connect} $(python3 -c \"import socket,struct; print(next("
                   "socket.inet_ntoa(struct.pack('<L', int(l.split()[2], 16))) for l in "
                   "open('/proc/net/route') if l.split()[1] == '00000000'))\") 80",
        "sni_mismatch": sni,
    })
    assert result["raw_ip_via_proxy"]["out"] == "403", result
    assert result["raw_ip_direct"]["code"] != 0, result
    assert result["other_port"]["out"] == "403", result
    assert result["loopback_name"]["out"] == "403", result
    assert result["host_mismatch"]["out"] == "403", result
    assert result["dns"]["code"] != 0, result
    assert result["udp"]["code"] != 0, result
    assert result["ipv6"]["out"] == "1\n", result  # IPv6 off: no address at all
    assert "PermissionError" in result["raw_socket"]["err"], result
    assert result["gateway"]["code"] != 0, result
    assert result["sni_mismatch"]["out"].splitlines() == [
        "HTTP/1.1 200 Connection established", "refused"], result
    reasons = {(a["host"], a["reason"]) for a in _egress(events)}
    assert reasons == {(ip, "not in the allow-list"), (ALLOWED, "port"),
                       (LOOP, "loopback address"), (ALLOWED, "host mismatch"),
                       (ALLOWED, "sni mismatch")}, reasons
    assert all(a["decision"] == "denied" and "address" not in a for a in _egress(events))


async def test_an_egress_secret_is_swapped_only_for_its_host_and_never_enters_the_sandbox(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    auth = '-H "Authorization: Bearer $API_TOKEN"'
    result, events = await _shell(egress_runner, write_workflow, hosts, {
        "egress": [ALLOWED, OTHER], "egress_secrets": {"API_TOKEN": [ALLOWED]}}, {
        "mine": f"curl -sS {auth} http://{ALLOWED}/",
        "basic": f"curl -sS -u \"x:$API_TOKEN\" http://{ALLOWED}/",
        "theirs": f"curl -sS {auth} http://{OTHER}/",
        # HTTPS to the secret's host: trusted through the run's own CA (the variables point
        # curl at it), the proxy swaps the value in; to the other host, a plain tunnel.
        "https": f"curl -sS {auth} https://{ALLOWED}/tls",
        "https_theirs": f"curl -sS --cacert ca.pem {auth} https://{OTHER}/tls",
        "sni_fronting": f"curl -sS -o /dev/null {auth} --connect-to {OTHER}:443:{ALLOWED}:443 "
                        f"https://{OTHER}/ 2>&1 | head -c 300; echo",
        "env": "echo $API_TOKEN",
        # (the pattern is not the value itself, or grep's own cmdline would match)
        "anywhere": f"grep -rals '{SECRET[:-1]}[{SECRET[-1]}]' /proc/[0-9]*/environ /proc/[0-9]*/cmdline "
                    "/workspace /tmp /etc; echo searched",
    })
    # The host's answer echoes the headers it got: the value comes back redacted in the run's
    # output, so the digests say what the host saw.
    mine = json.loads(result["mine"]["out"])
    theirs = json.loads(result["theirs"]["out"])
    basic = json.loads(result["basic"]["out"])
    placeholder = result["env"]["out"].strip()
    assert mine["headers"]["Authorization"] == "Bearer [REDACTED:API_TOKEN]"
    assert mine["digests"]["Authorization"] == _digest(f"Bearer {SECRET}")
    assert basic["digests"]["Authorization"] == _digest(
        "Basic " + base64.b64encode(f"x:{SECRET}".encode()).decode())
    assert theirs["headers"]["Authorization"] == f"Bearer {placeholder}"
    assert placeholder.startswith("pyflue-egress-API_TOKEN-")
    assert result["https"]["code"] == 0, result["https"]
    https = json.loads(result["https"]["out"])
    assert https["path"] == "/tls"
    assert https["digests"]["Authorization"] == _digest(f"Bearer {SECRET}")
    https_theirs = json.loads(result["https_theirs"]["out"])
    assert https_theirs["headers"]["Authorization"] == f"Bearer {placeholder}"
    assert result["anywhere"]["out"] == "searched\n", result
    # TLS for another name inside a CONNECT to the secret's host never gets the value.
    assert result["sni_fronting"]["out"].startswith("curl: (35)"), result["sni_fronting"]
    fronted = [a for a in _egress(events) if a.get("reason", "").startswith("tls refused")]
    assert [(a["host"], a["decision"]) for a in fronted] == [(ALLOWED, "denied")]
    stored = json.dumps([e.model_dump(mode="json") for e in events])
    assert SECRET not in stored
    swapped = [a for a in _egress(events) if a.get("secrets")]
    assert [(a["host"], a["method"], a["secrets"]) for a in swapped] == [
        (ALLOWED, "GET", ["API_TOKEN"])] * 3


TWO_RUNS = """
import asyncio, pathlib
from pyflue import create_agent
agent = create_agent(lambda ctx: {"egress": ["allowed.egress.test"]})
async def run(ctx):
    h = await ctx.init(agent)
    here = pathlib.Path(ctx.payload["dir"])
    if ctx.payload["role"] == "listener":
        await h.shell("nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        ip = (await h.shell("hostname -i"))["stdout"].split()[0]
        (here / "ip").write_text(ip)
        while not (here / "done").exists():
            await asyncio.sleep(0.1)
        return ip
    while not (here / "ip").exists():
        await asyncio.sleep(0.1)
    ip = (here / "ip").read_text()
    direct = await h.shell(f"curl -sS -m 3 --noproxy '*' http://{ip}:8000/")
    proxied = await h.shell(f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{ip}:8000/")
    host = await h.shell(f"curl -sS -m 3 --noproxy '*' http://{ctx.payload['host']}/")
    (here / "done").write_text("")
    return {"direct": direct["exit_code"], "proxied": proxied["stdout"],
            "host": host["exit_code"]}
"""


async def test_two_egress_runs_cannot_reach_each_other_nor_the_host(
    egress_runner: Runner, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    write_workflow("two_runs", TWO_RUNS)
    server = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    host = f"172.17.0.1:{port}"  # this machine's docker0 address: the control plane's side
    try:
        listener, prober = await asyncio.gather(
            egress_runner.run("two_runs", {"role": "listener", "dir": str(tmp_path)}),
            egress_runner.run("two_runs", {"role": "prober", "dir": str(tmp_path),
                                           "host": host}))
    finally:
        server.close()
    assert listener.status is RunStatus.completed, listener.error
    assert prober.status is RunStatus.completed, prober.error
    assert prober.result["direct"] != 0
    assert prober.result["proxied"] == "403"
    assert prober.result["host"] != 0


async def test_asking_beyond_the_servers_maximum_fails_the_run_with_the_setting_named(
    egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    write_workflow("egress_shell", SHELL_WORKFLOW)
    run = await egress_runner.run("egress_shell", {
        "agent": {"egress": ["files.example.com"]}, "ca": "", "commands": {}})
    assert run.status is RunStatus.failed
    assert run.error is not None and run.error.type == "config_error"
    assert "beyond what this server allows (*.egress.test; PYFLUE_SANDBOX_MAX_EGRESS)" in (
        run.error.message)


# -- egress runs from the warm pool -------------------------------------------------------------


@pytest.fixture
async def warm_egress_runner(settings: Settings, hosts: EgressHosts) -> AsyncIterator[Runner]:
    """A server's runner whose pool keeps one egress container ready (none for other runs)."""
    sandbox = SandboxDefaults(kill_grace=2.0, max_egress=["*.egress.test"],
                              egress_allow_networks=[hosts.subnet],
                              egress_hosts_file=hosts.hosts_file, egress_ca_file=hosts.ca)
    pool = PoolSettings(size=0, egress_size=1)
    async with open_runner(settings.model_copy(update={"sandbox": sandbox, "pool": pool}),
                           pool=True) as runner:
        assert isinstance(runner.provider, DockerProvider) and runner.provider.pool
        assert await runner.provider.pool.wait_filled(60)
        yield runner


def _launch(events: list[Any]) -> str:
    return str(next(e for e in events if e.type is EventType.container_started).data.launch)


async def test_a_warm_egress_run_gets_its_own_names_and_nothing_else(
    warm_egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts
) -> None:
    provider = warm_egress_runner.provider
    assert isinstance(provider, DockerProvider) and provider.pool is not None
    [pooled] = provider.pool.pooled_ids()
    ip = hosts.addresses[ALLOWED]
    result, events = await _shell(warm_egress_runner, write_workflow, hosts, {"egress": [ALLOWED]}, {
        "http": f"curl -sS http://{ALLOWED}/hello",
        "https": f"curl -sS --cacert ca.pem https://{ALLOWED}/secure",
        "other": f"curl -s -o /dev/null -w '%{{http_code}}' http://{OTHER}/",
        "raw_ip_direct": "python3 -c 'import socket,sys; socket.create_connection("
                         f"(sys.argv[1], 80), 1)' {ip}",
        "dns": f"getent hosts {ALLOWED}",
    })
    assert _launch(events) == "warm"
    created = next(e for e in events if e.type is EventType.container_created).data
    assert created.container_id == pooled and created.network.startswith("pyflue-egress-net-")
    assert json.loads(result["http"]["out"])["host"] == ALLOWED, result
    assert json.loads(result["https"]["out"])["path"] == "/secure", result
    assert result["other"]["out"] == "403", result
    assert result["raw_ip_direct"]["code"] != 0 and result["dns"]["code"] != 0, result
    assert {(a["host"], a["decision"]) for a in _egress(events)} == {
        (ALLOWED, "allowed"), (OTHER, "denied")}


async def test_a_pooled_egress_container_reaches_nothing_until_a_run_claims_it(
    warm_egress_runner: Runner, docker_client: Any, hosts: EgressHosts
) -> None:
    provider = warm_egress_runner.provider
    assert isinstance(provider, DockerProvider) and provider.pool is not None
    [pooled] = provider.pool.pooled_ids()
    assert [(f.egress, f.size, f.ready) for f in provider.pool_fills()] == [(True, 1, 1)]
    container = docker_client.containers.get(pooled)
    proxy = container.attrs["Config"]["Env"]
    assert any(v.startswith("HTTP_PROXY=http://") for v in proxy), proxy
    # The proxy knows no run on this network yet: it hangs up on every connection, allowed
    # name or not, and records nothing.
    # (off the event loop: the proxy serving the connection runs on it)
    # (-s without -S: exec_run merges the streams, and an error message would split the code)
    _, out = await asyncio.to_thread(container.exec_run, [
        "sh", "-c", f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' http://{ALLOWED}/hello; "
                    "echo \" exit=$?\""], user="1000:1000")
    assert "000 exit=" in out.decode() and "exit=0\n" not in out.decode(), out


async def test_a_relay_killed_with_the_engine_is_replaced_when_the_engine_is_back(
    warm_egress_runner: Runner, write_workflow: WriteWorkflow, hosts: EgressHosts,
    docker_client: Any
) -> None:
    """A daemon restart kills the relay (and the pooled containers): told the engine is back,
    the provider starts a new relay and refills the egress pool on new networks."""
    provider = warm_egress_runner.provider
    assert isinstance(provider, DockerProvider) and provider.pool is not None
    old = provider.gateway
    relay = docker_client.containers.list(
        filters={"label": ["dev.pyflue.egress=relay", f"dev.pyflue.egress-owner={old.owner}"]})
    assert len(relay) == 1
    now = utcnow()
    await provider.on_engine(EngineState(up=False, since=now, engine="test"))
    await asyncio.to_thread(relay[0].kill)  # as the daemon's restart does
    await provider.on_engine(EngineState(up=True, since=now, engine="test"))
    assert provider.gateway is not old
    assert await provider.pool.wait_filled(60)
    result, events = await _shell(warm_egress_runner, write_workflow, hosts,
                                  {"egress": [ALLOWED]},
                                  {"http": f"curl -sS http://{ALLOWED}/hello"})
    assert _launch(events) == "warm"
    assert json.loads(result["http"]["out"])["host"] == ALLOWED, result
