"""Egress, measured as ratios against the same work without it, in one run.

Against local test hosts only (containers on a Docker network this script creates, resolved by
the proxy through a hosts file; see tests/integration/egress_hosts.py):

(1) start: ``DockerProvider.open`` of a cold sandbox until it is ready for commands, with
    ``egress`` (its own network, the relay attached, registered with the proxy) against
    without (``network: none``), interleaved pairs, each beside full spare networks; then
    egress starts without a spare (the network made during the start). Beside it, what the
    engine alone adds: docker-py ``start`` on network none against on an internal network.
    Then the same pairs from the warm pool (a pool of one for each, refilled, untimed, before
    each start): a pooled container on network none against a pooled egress container (its
    network made and attached at refill; the claim gives the proxy the run's names).
    Target: p50 at most +50 ms.
(2) download: 50 MiB by curl inside the sandbox, through the egress proxy (plain HTTP, and
    HTTPS through CONNECT) against the same download over ``network: bridge`` straight to the
    host, interleaved; curl's own ``time_total``. Target: throughput >= 0.8x bridge.

    .venv/bin/python benchmarks/bench_egress.py            # 15 start pairs, 5 downloads each
    .venv/bin/python benchmarks/bench_egress.py --quick    # 5 and 2
    .venv/bin/python benchmarks/bench_egress.py --json out.json

Exits 0 when every measurement ran (targets met or not), 1 on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, run_benchmark, say
from pyflue.sandbox.base import SandboxSpec
from pyflue.sandbox.docker import DockerProvider
from pyflue.sandbox.docker.egress import EgressConfig
from pyflue.settings import DEFAULT_IMAGE
from pyflue.workers import local_owner
from tests.integration.egress_hosts import egress_hosts

HOST = "files.egress.test"
SIZE = 50 << 20


def _spec(n: int, **extra: Any) -> SandboxSpec:
    return SandboxSpec(run_id=f"workflow:bench-egress:{n}-{time.monotonic_ns()}",
                       workflow="bench-egress", image=DEFAULT_IMAGE, **extra)


async def _shell(box: Any, command: str) -> str:
    out: list[bytes] = []
    status = await box.exec(command, cwd="/workspace", env={}, timeout=120,
                            on_output=lambda stream, chunk: out.append(chunk))
    text = b"".join(out).decode()
    if status.exit_code != 0:
        raise RuntimeError(f"{command!r} failed ({status.exit_code}): {text}")
    return text


async def _start(provider: DockerProvider, spec: SandboxSpec) -> float:
    t0 = time.perf_counter()
    async with provider.open(spec, lambda event: None):
        ready = time.perf_counter() - t0
    return ready * 1000


async def _spares_full(gateway: Any) -> None:
    for _ in range(600):
        if gateway.spares >= gateway.spare_size:
            return
        await asyncio.sleep(0.05)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    client = docker.from_env()
    folder = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    with egress_hosts(client, folder, [HOST]) as hosts:
        server = next(c for c in client.containers.list(filters={"label": "dev.pyflue.test"})
                      if c.attrs["Config"]["Env"] and f"NAME={HOST}" in c.attrs["Config"]["Env"]
                      and hosts.addresses[HOST] in json.dumps(c.attrs["NetworkSettings"]))
        client.networks.get("bridge").connect(server)  # for the bridge baseline
        server.reload()
        bridge_ip = server.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        provider = DockerProvider(egress=EgressConfig(
            relay_image=DEFAULT_IMAGE, allow_networks=(hosts.subnet, f"{bridge_ip}/32"),
            hosts_file=hosts.hosts_file))
        try:
            report = {"machine": machine(client, size_mib=SIZE >> 20)}
            egress = {"egress": (HOST,)}
            await _start(provider, _spec(0, **egress))  # the relay starts once per worker
            plain, with_egress, inline = [], [], []
            gateway = provider.gateway
            for n in range(args.pairs):
                await _spares_full(gateway)  # untimed: both sides start beside full spares
                plain.append(await _start(provider, _spec(n)))
                await _spares_full(gateway)
                with_egress.append(await _start(provider, _spec(n, **egress)))
            gateway.spare_size = 0  # then without spares: the network made in the start
            while gateway.spares:
                await _start(provider, _spec(99, **egress))
            for n in range(args.pairs // 3 or 1):
                inline.append(await _start(provider, _spec(n, **egress)))
            gateway.spare_size = 2
            p50 = statistics.median
            report["start_ms"] = {"none_p50": round(p50(plain), 1),
                                  "egress_p50": round(p50(with_egress), 1),
                                  "added_p50": round(p50(with_egress) - p50(plain), 1),
                                  "egress_without_spare_p50": round(p50(inline), 1),
                                  "target_added": 50}
            report["start_ms"]["raw_docker"] = _raw_network_cost(client, args.pairs)
            report["start_ms"]["warm"] = await _warm_starts(provider, args.pairs)
            say(f"start: {report['start_ms']}")
            report["download"] = await _downloads(provider, hosts.ca, bridge_ip, args.downloads)
            say(f"download: {report['download']}")
        finally:
            await provider.close()
    return report


async def _warm_starts(provider: DockerProvider, pairs: int) -> dict[str, float]:
    """Pairs of starts from the warm pool: network none against egress, each pool of one
    refilled (untimed) before every start; the pool is drained after."""
    templates = [(_spec(0), 1), (_spec(0, egress=(HOST,)), 1)]
    pool = provider.enable_pool(templates, owner=local_owner())
    provider.start_pool()
    plain: list[float] = []
    with_egress: list[float] = []
    try:
        for n in range(pairs):
            for side, extra in ((plain, {}), (with_egress, {"egress": (HOST,)})):
                if not await pool.wait_filled(120):
                    raise RuntimeError("the warm pool did not fill within 120 s")
                await asyncio.sleep(0.3)  # the refill's own work settles (spare networks)
                side.append(await _start(provider, _spec(n, **extra)))
    finally:
        await pool.drain()
        provider.pool = None
    p50 = statistics.median
    return {"none_p50": round(p50(plain), 1), "egress_p50": round(p50(with_egress), 1),
            "added_p50": round(p50(with_egress) - p50(plain), 1)}


async def _downloads(provider: DockerProvider, ca: Path, bridge_ip: str,
                     rounds: int) -> dict[str, Any]:
    curl = "curl -sS -o /dev/null -w '%{time_total}' "
    times: dict[str, list[float]] = {"bridge_http": [], "proxy_http": [], "bridge_https": [],
                                     "proxy_https": []}
    direct = f"--noproxy '*' --resolve {HOST}:80:{bridge_ip} --resolve {HOST}:443:{bridge_ip}"
    async with provider.open(_spec(1, network="bridge"), lambda e: None) as plain, \
            provider.open(_spec(2, egress=(HOST,)), lambda e: None) as proxied:
        for box in (plain, proxied):
            await box.put("/workspace", [_entry("ca.pem", ca.read_bytes())])
        for _ in range(rounds):
            times["bridge_http"].append(float(await _shell(
                plain, f"{curl} {direct} http://{HOST}/big/{SIZE}")))
            times["bridge_https"].append(float(await _shell(
                plain, f"{curl} {direct} --cacert ca.pem https://{HOST}/big/{SIZE}")))
            times["proxy_http"].append(float(await _shell(
                proxied, f"{curl} http://{HOST}/big/{SIZE}")))
            times["proxy_https"].append(float(await _shell(
                proxied, f"{curl} --cacert ca.pem https://{HOST}/big/{SIZE}")))
    mib_s = {k: round((SIZE >> 20) / statistics.median(v), 1) for k, v in times.items()}
    return {"mib_per_s_median": mib_s,
            "http_ratio": round(mib_s["proxy_http"] / mib_s["bridge_http"], 2),
            "https_ratio": round(mib_s["proxy_https"] / mib_s["bridge_https"], 2),
            "target_ratio": 0.8}


def _raw_network_cost(client: Any, pairs: int) -> dict[str, float]:
    """What the engine alone adds: ``container.start`` with network none against on an
    internal, inhibit_ipv4 bridge network (the egress network's options), docker-py only."""
    net = client.api.create_network(
        "pyflue-bench-egress-raw", driver="bridge", internal=True,
        options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        labels={"dev.pyflue.test": "bench-egress"})
    times: dict[str, list[float]] = {"none": [], "internal": []}
    try:
        for _ in range(pairs):
            for kind, extra in (("none", {"network_mode": "none"}),
                                ("internal", {"network": "pyflue-bench-egress-raw"})):
                box = client.containers.create(DEFAULT_IMAGE, ["sleep", "60"],
                                               labels={"dev.pyflue.test": "bench-egress"},
                                               **extra)
                t0 = time.perf_counter()
                box.start()
                times[kind].append((time.perf_counter() - t0) * 1000)
                box.remove(force=True)
    finally:
        client.api.remove_network(net["Id"])
    none, internal = (statistics.median(times[k]) for k in ("none", "internal"))
    return {"start_none_p50": round(none, 1), "start_internal_p50": round(internal, 1),
            "added_p50": round(internal - none, 1)}


def _entry(name: str, data: bytes) -> Any:
    from pyflue.sandbox.base import PutEntry

    return PutEntry(path=name, data=data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 start pairs, 2 downloads")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    args.pairs, args.downloads = (5, 2) if args.quick else (15, 5)
    report, code = run_benchmark(main_async, args, "benchmarks/bench_egress.py", argv)
    if report is not None:
        text = json.dumps(report, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
