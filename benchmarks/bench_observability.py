"""What metrics, traces and resource sampling cost: two ``pyflue serve`` processes in one run,
one with all of it on, one with all of it off, measured side by side on the same engine.

- ``off``: PYFLUE_METRICS=false, PYFLUE_RESOURCE_INTERVAL=0, no OTEL_* variable.
- ``on``: PYFLUE_METRICS=true (``/metrics`` scraped every 5 s during the measurements, three
  times as often as Prometheus' default; the CPU one scrape costs is reported apart), traces
  exported over OTLP/HTTP to a sink on 127.0.0.1 (a real HTTP server in this process that
  reads every export), resource samples every second.

Both with the warm pool off (PYFLUE_POOL_SIZE=0: every run starts cold, as the trivial-run
benchmark of bench_sandbox.py does), their own SQLite store, PYFLUE_MAX_CONCURRENCY=60.

(1) the trivial run: ``POST /workflows/box?wait=result`` of a workflow that does ``ctx.init``
    + ``harness.shell("true")`` + a result, sequential, alternating the servers (and which goes
    first) pair by pair. Target: ``on`` p50 at most 5% above ``off`` p50. Also reported: the
    CPU time each server process spent per run (from /proc), which the machine's load disturbs
    far less than wall time.
(2) ``GET /runs/{id}`` p99 with 50 runs active on EACH server at once (100 containers, each
    run in a ``sleep``; the ``on`` server samples its 50 every second meanwhile): sequential
    requests alternating the servers, ids cycling. Target: ``on`` p99 at most 5% above ``off``.
    The runs are then cancelled and nothing labelled with their ids may be left.
(3) in process, noise-free: what the observers add per event (the metrics and a run's trace,
    exported over OTLP to the sink), timed over a run's typical events (a shell call's
    start, output and end, a file write, a log line), against the same events recorded with
    no observer (the recorder's redaction and queueing only).

    .venv/bin/python benchmarks/bench_observability.py            # full: 30 pairs, 600 GETs
    .venv/bin/python benchmarks/bench_observability.py --quick    # smoke: 5 pairs, 10 active

The machine is shared and loaded: only the ratios in one run mean anything. Exits 0 when every
measurement ran (targets met or not), 1 on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
from _common import machine, run_benchmark, say
from bench_api import (
    SLEEPER_WORKFLOW,
    Server,
    cancel_all,
    get_runs_latency,
    ramp_up,
    summary,
    sweep_scope,
)

TARGET_RATIO = 1.05

BOX_WORKFLOW = '''\
"""The trivial run: a container, one command, a result."""

from pyflue import create_agent

agent = create_agent(lambda ctx: {})


async def run(ctx):
    harness = await ctx.init(agent)
    await harness.shell("true")
    return {"ok": True}
'''

COMMON = {"PYFLUE_POOL_SIZE": "0"}
OFF = {**COMMON, "PYFLUE_METRICS": "false", "PYFLUE_RESOURCE_INTERVAL": "0"}


class Sink:
    """An OTLP/HTTP endpoint that reads every export and answers 200 (empty response)."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sink.exports += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@contextlib.contextmanager
def environ(extra: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """os.environ with ``extra`` set and ``drop`` unset, for a server started inside."""
    saved = dict(os.environ)
    for name in drop:
        os.environ.pop(name, None)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def scraper(client: httpx.AsyncClient, stop: asyncio.Event, every: float) -> int:
    """Scrapes ``/metrics`` every ``every`` seconds until ``stop``; returns the count."""
    count = 0
    while not stop.is_set():
        (await client.get("/metrics")).raise_for_status()
        count += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return count


async def trivial(clients: dict[str, httpx.AsyncClient], pairs: int, warmup: int
                  ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(warmup + pairs):
        order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
        for side in order:
            t0 = time.perf_counter()
            r = await clients[side].post("/workflows/box?wait=result", json={})
            took = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"{side}: POST /workflows/box: {r.status_code} {r.text[:300]}")
            if i >= warmup:
                out[side].append(took)
    return out


async def loaded_gets(clients: dict[str, httpx.AsyncClient], ids: dict[str, list[str]],
                      n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(n):
        for side in (["off", "on"] if i % 2 == 0 else ["on", "off"]):
            out[side] += await get_runs_latency(clients[side], ids[side][i:] + ids[side][:i], 1)
    return out


def per_event_cost(endpoint: str, n: int) -> dict[str, Any]:
    """CPU microseconds per event in the recorder's path (the emitting thread's; the
    exporter's thread is the server CPU figure's), with and without observers."""
    from pyflue.events import FileWrite, Log, ShellEnd, ShellOutput, ShellStart
    from pyflue.metrics import Metrics
    from pyflue.models import Run, RunStatus, new_run_id, utcnow
    from pyflue.observe import watch_run
    from pyflue.secrets import Redactor
    from pyflue.tracing import new_trace_id, open_tracer

    events = [ShellStart(shell_id="sh-1", command="make test", cwd="/workspace", timeout=60),
              ShellOutput(shell_id="sh-1", stream="stdout", text="ok 1 - it works\n"),
              ShellEnd(shell_id="sh-1", exit_code=0, timed_out=False, duration_ms=42),
              FileWrite(path="/workspace/a.txt", bytes=1000),
              Log(level="info", message="step done", fields={"n": 1})]
    redactor = Redactor()
    tracer = open_tracer({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert tracer is not None
    observers: list[Any] = [Metrics("bench"), tracer]
    out: dict[str, Any] = {}
    for name, chosen in (("none", []), ("metrics_and_traces", observers)):
        best = float("inf")
        for _ in range(5):
            now = utcnow()
            run = Run(run_id=new_run_id("bench"), workflow="bench", status=RunStatus.running,
                      created_at=now, started_at=now, trace_id=new_trace_id())
            watches = watch_run(chosen, run)
            t0 = time.thread_time()  # this thread's CPU: the load of the machine left out
            for i in range(n):
                data = events[i % len(events)]
                clean = data.scrubbed(redactor.data) if redactor else data.wire
                watches.event(data, clean, utcnow())
            best = min(best, (time.thread_time() - t0) / n)
            watches.ended(run.model_copy(update={"status": RunStatus.completed,
                                                 "finished_at": utcnow(), "duration_ms": 1}))
            tracer.provider.force_flush()  # untimed: the exporter's queue empty again
        out[name + "_us"] = best * 1e6
    tracer.close()
    out["added_us_per_event"] = out["metrics_and_traces_us"] - out["none_us"]
    return out


def ratio(on: dict[str, Any], off: dict[str, Any], key: str) -> float:
    return float(on[key]) / float(off[key])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    dclient = docker.from_env()
    sink = Sink()
    tmp = Path(tempfile.mkdtemp(prefix="pyflue-bench-obs-"))
    project = tmp / "project"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows" / "box.py").write_text(BOX_WORKFLOW)
    (project / "workflows" / "sleeper.py").write_text(SLEEPER_WORKFLOW)
    servers = {"off": Server(project, tmp / "off.db", 60), "on": Server(project, tmp / "on.db", 60)}
    on_env = {**COMMON, "PYFLUE_METRICS": "true", "PYFLUE_RESOURCE_INTERVAL": "1",
              "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "pyflue-bench"}
    otel = tuple(k for k in os.environ if k.startswith("OTEL_"))
    report: dict[str, Any] = {"machine": machine(dclient, pairs=args.pairs, active=args.active)}
    ids: dict[str, list[str]] = {}
    try:
        with environ(OFF, drop=otel):
            servers["off"].start()
        with environ(on_env, drop=otel):
            servers["on"].start()
        limits = httpx.Timeout(120.0)
        async with httpx.AsyncClient(base_url=servers["off"].url, timeout=limits,
                                     trust_env=False) as off, \
                httpx.AsyncClient(base_url=servers["on"].url, timeout=limits,
                                  trust_env=False) as on:
            clients = {"off": off, "on": on}
            assert (await off.get("/metrics")).status_code == 404  # really off
            stop = asyncio.Event()
            scraping = asyncio.create_task(scraper(on, stop, args.scrape_every))
            say(f"(1) trivial run: {args.pairs} pairs (+{args.warmup} warm-up)")
            cpu0 = {side: server.cpu_seconds() for side, server in servers.items()}
            runs = await trivial(clients, args.pairs, args.warmup)
            cpu = {side: (server.cpu_seconds() - cpu0[side]) / (args.pairs + args.warmup)
                   for side, server in servers.items()}
            one = {side: summary(xs) for side, xs in runs.items()}
            report["trivial_run"] = one | {
                "server_cpu_ms_per_run": {side: c * 1e3 for side, c in cpu.items()},
                "server_cpu_ratio": cpu["on"] / cpu["off"] if cpu["off"] else None,
                "p50_ratio": ratio(one["on"], one["off"], "p50_ms"),
                "mean_ratio": ratio(one["on"], one["off"], "mean_ms")}
            say(f"  p50 off {one['off']['p50_ms']:.1f} ms, on {one['on']['p50_ms']:.1f} ms")
            say(f"(2) {args.active} runs active on each server")
            ramps = await asyncio.gather(*(ramp_up(c, dclient, args.active, 600, 300)
                                           for c in clients.values()))
            ids = {side: ramp["ids"] for side, ramp in zip(clients, ramps, strict=True)}
            cpu0 = {side: server.cpu_seconds() for side, server in servers.items()}
            t0 = time.perf_counter()
            gets = await loaded_gets(clients, ids, args.gets)
            took = time.perf_counter() - t0
            loaded_cpu = {side: (server.cpu_seconds() - cpu0[side]) / took
                          for side, server in servers.items()}
            two = {side: summary(xs) for side, xs in gets.items()}
            report["get_run_loaded"] = two | {
                "server_cpu_share": loaded_cpu, "seconds": took,
                "p99_ratio": ratio(two["on"], two["off"], "p99_ms"),
                "p50_ratio": ratio(two["on"], two["off"], "p50_ms")}
            say(f"  p99 off {two['off']['p99_ms']:.1f} ms, on {two['on']['p99_ms']:.1f} ms")
            stop.set()
            report["scrapes"] = await scraping
            cpu0 = {"on": servers["on"].cpu_seconds()}
            for _ in range(50):
                (await on.get("/metrics")).raise_for_status()
            report["server_cpu_ms_per_scrape"] = (servers["on"].cpu_seconds() - cpu0["on"]) * 20
            sample = (await on.get(f"/runs/{ids['on'][0]}/metrics")).json()["metrics"]
            report["samples_of_one_loaded_run"] = len(sample)
            cancelled = await asyncio.gather(*(cancel_all(clients[s], dclient, ids[s])
                                               for s in clients))
            report["cancel"] = dict(zip(clients, cancelled, strict=True))
    finally:
        for server in servers.values():
            server.stop()
        left = sum(sweep_scope(dclient, server.scope) for server in servers.values())
        report["swept_after"] = left
    say("(3) per-event cost in process")
    report["per_event"] = await asyncio.to_thread(per_event_cost, sink.url, args.events)
    report["otlp"] = {"exports": sink.exports, "bytes": sink.bytes}
    leaked = any(c["leaked"]["containers"] or c["leaked"]["volumes"]
                 for c in report.get("cancel", {}).values())
    if leaked or report["swept_after"]:
        raise RuntimeError(f"containers or volumes were left behind: {report}")
    report["targets"] = {
        "trivial_run_p50_ratio_at_most": TARGET_RATIO,
        "trivial_run_met": report["trivial_run"]["p50_ratio"] <= TARGET_RATIO,
        "get_run_p99_ratio_at_most": TARGET_RATIO,
        "get_run_met": report["get_run_loaded"]["p99_ratio"] <= TARGET_RATIO,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--active", type=int, default=50)
    parser.add_argument("--gets", type=int, default=600)
    parser.add_argument("--scrape-every", type=float, default=5.0,
                        help="seconds between scrapes of the `on` server's /metrics")
    parser.add_argument("--events", type=int, default=1500,
                        help="events per timed batch in (3) (under the exporter's queue of 2048)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.warmup, args.active, args.gets, args.events = 5, 1, 10, 100, 500
    report, code = run_benchmark(main_async, args, "benchmarks/bench_observability.py", argv)
    if report is not None:
        text = json.dumps(report, indent=2, default=str)
        print(text)
        if args.json:
            args.json.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
