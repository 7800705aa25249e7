"""Runs cannot reach each other, shown positively: run A's listener is proven up from inside A,
over every address A has, before run B tries each of those addresses and fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

# Connects to every address given; prints "<address> ok" or "<address> <error>" per line.
KNOCK = ("python3 -c \"import socket,sys\n"
         "for a in sys.argv[1:]:\n"
         " try:\n  socket.create_connection((a, 8000), timeout=2).close(); print(a, 'ok')\n"
         " except OSError as e: print(a, type(e).__name__)\" {}")
# Every address of the container: IPv4 and IPv6, loopback included.
ADDRESSES = ("python3 -c \"import socket\n"
             "a = {'127.0.0.1'}\n"
             "try: v4 = open('/proc/net/fib_trie').read().split()\n"
             "except OSError: v4 = []  # gVisor has no fib_trie: only loopback without a network\n"
             "a |= {v4[i+1] for i, w in enumerate(v4) if w == '|--' and v4[i+1].count('.') == 3}\n"
             "try: v6 = open('/proc/net/if_inet6').read().split(chr(10))\n"
             "except OSError: v6 = []\n"
             "a |= {':'.join(l.split()[0][i:i+4] for i in range(0, 32, 4)) for l in v6 if l}\n"
             "print(*sorted(x for x in a if not x.endswith('.0') and not x.endswith('.255')))\"")

LISTENER = """
import asyncio
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
KNOCK = KNOCK_SOURCE
async def run(ctx):
    h = await ctx.init(agent)
    serve = asyncio.ensure_future(h.shell(
        "exec python3 -c \\"import socket; s = socket.create_server(('::', 8000), "
        "family=socket.AF_INET6, dualstack_ipv6=True); "
        "[s.accept()[0].close() for _ in iter(int, 1)]\\"", timeout=60))
    addresses = (await h.shell(ADDRESSES_SOURCE))["stdout"].split()
    for _ in range(100):  # up when every address answers from inside
        seen = await h.shell(KNOCK.format(" ".join(addresses)))
        if all(line.endswith(" ok") for line in seen["stdout"].splitlines()):
            break
        await asyncio.sleep(0.1)
    SHARED["addresses"] = addresses
    SHARED["inside"] = seen["stdout"]
    SHARED["up"].set()
    await SHARED["tried"].wait()
    serve.cancel()
    await asyncio.gather(serve, return_exceptions=True)
    return addresses
""".replace("KNOCK_SOURCE", repr(KNOCK)).replace("ADDRESSES_SOURCE", repr(ADDRESSES))

KNOCKER = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
KNOCK = KNOCK_SOURCE
async def run(ctx):
    h = await ctx.init(agent)
    await SHARED["up"].wait()
    try:
        return (await h.shell(KNOCK.format(" ".join(SHARED["addresses"]))))["stdout"]
    finally:
        SHARED["tried"].set()
""".replace("KNOCK_SOURCE", repr(KNOCK))


async def test_a_run_cannot_reach_a_listener_of_another_run_on_any_of_its_addresses(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("listener", LISTENER)
    write_workflow("knocker", KNOCKER)
    shared: dict[str, Any] = {"up": asyncio.Event(), "tried": asyncio.Event()}
    for name in ("listener", "knocker"):
        runner.registry.get(name).module.SHARED = shared  # type: ignore[attr-defined]
    a, b = await asyncio.wait_for(
        asyncio.gather(runner.run("listener", {}), runner.run("knocker", {})), 120)
    assert a.status is RunStatus.completed and b.status is RunStatus.completed, (a.error, b.error)
    addresses = a.result
    assert "127.0.0.1" in addresses
    # Proven up first: from inside A, every one of A's addresses answered.
    assert shared["inside"].splitlines() == [f"{x} ok" for x in addresses]
    # Then from B, none of them did.
    lines = b.result.splitlines()
    assert [line.split()[0] for line in lines] == addresses
    assert all(not line.endswith(" ok") for line in lines), lines
