"""pyflue against SWE-ReX's DockerDeployment, measured on the same machine in the same run.

SWE-ReX (the swe-rex package) runs a FastAPI server (``swerex-remote``) in each container and
talks HTTP to it on a published port; pyflue talks to a static helper over the channel. Here
both run on the same engine, pairs interleaved (alternating which goes first):

(start)   SWE-ReX ``DockerDeployment(image=pyflue/swerex-bench, pull="never",
          python_standalone_dir=None).start()`` (``docker run``, then polled until the runtime
          answers) and its first ``execute("true")``, against a pyflue cold start: ``Runner.run``
          of a workflow until its container is created and started (``ctx.init``) and its
          first ``harness.shell("true")`` has answered (no warm pool; removal untimed);
(execute) ``runtime.execute(Command(command="true", shell=True))`` against
          ``harness.shell("true")``;
(session) ``runtime.run_in_session(BashAction(command="true"))`` in a bash session against
          ``harness.shell("true")``;
(1k-write, 1k-read) ``runtime.write_file`` / ``read_file`` of 1 KiB of text against
          ``harness.fs.write_file`` / ``harness.fs.read_bytes`` of the same bytes;
(memory)  each side's container, idle for 2 s after the calls above: docker stats' usage less
          inactive file, in MiB (as bench_pool.py's idle memory).

The small calls run in one long-lived deployment and one pyflue run's container (a hardened
run by the real Runner, SQLite store in a temporary folder). SWE-ReX's calls run on an event loop
of their own in a thread, timed inside it, so each side's waits leave the other's loop alone
(SWE-ReX's start-up poll sleeps with ``time.sleep``). Ratios are pyflue p50 / SWE-ReX p50.

It needs swe-rex in its own virtualenv (the project's .venv stays as it is), from the repo root:

    python3 -m venv .venv-swerex && .venv-swerex/bin/pip install -e . swe-rex aiohttp
    .venv-swerex/bin/python benchmarks/bench_swerex.py             # full run
    .venv-swerex/bin/python benchmarks/bench_swerex.py --quick     # a smoke run
    .venv-swerex/bin/python benchmarks/bench_swerex.py --json out.json

(swe-rex 1.4.0 imports aiohttp without declaring it, hence ``aiohttp``.) The image
``pyflue/swerex-bench`` is built once, from ``pyflue/sandbox:latest`` with the same swe-rex
version installed by pip (the host's CA bundle and package index handed in), and reused.

Exits 0 when every measurement ran, 2 when swe-rex is missing or the image cannot be built,
1 on another error, 130 when interrupted; it removes every container it started in each case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
from _common import machine, run_benchmark, say
from bench_pool import idle_mib
from bench_sandbox import SESSION_WORKFLOW, p90, run_failed, timed

from pyflue.models import RunStatus
from pyflue.settings import Settings
from pyflue.wiring import open_runner

SETUP = "python3 -m venv .venv-swerex && .venv-swerex/bin/pip install -e . swe-rex aiohttp"
IMAGE = "pyflue/swerex-bench"
BASE = "pyflue/sandbox:latest"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# On SWE-ReX's containers (through docker_args), so that whatever is left is found and removed.
MARK = "dev.pyflue.bench-swerex"
VERSION_LABEL = "dev.pyflue.bench-swerex-version"


class SetupError(RuntimeError):
    """swe-rex or its image is missing: said in one line, exit 2."""


def load_swerex() -> SimpleNamespace:
    # SWE-ReX logs every start at DEBUG on stderr unless told otherwise (read at import)
    os.environ.setdefault("SWE_REX_LOG_STREAM_LEVEL", "WARNING")
    try:
        from swerex.deployment.docker import DockerDeployment
        from swerex.runtime.abstract import (
            BashAction,
            Command,
            CreateBashSessionRequest,
            ReadFileRequest,
            WriteFileRequest,
        )
    except ImportError as exc:
        raise SetupError(f"swe-rex is not importable ({exc}); set it up from the repo root "
                         f"with: {SETUP}") from None
    return SimpleNamespace(
        DockerDeployment=DockerDeployment, BashAction=BashAction, Command=Command,
        CreateBashSessionRequest=CreateBashSessionRequest, ReadFileRequest=ReadFileRequest,
        WriteFileRequest=WriteFileRequest, version=importlib.metadata.version("swe-rex"))


# -- the image -----------------------------------------------------------------------------


def pip_index_options() -> list[str]:
    """The host's package index for pip in the build: the configured index-url and any http(s)
    extra-index-url (file:// indexes and find-links are not visible inside the build)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, check=False).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        config[key.rpartition(".")[2]] = value.strip().strip("'\"")
    index = os.environ.get("PIP_INDEX_URL") or config.get("index-url", "")
    extras = (os.environ.get("PIP_EXTRA_INDEX_URL") or config.get("extra-index-url", "")).split()
    opts = ["--index-url", index] if index.startswith(("http://", "https://")) else []
    for url in extras:
        if url.startswith(("http://", "https://")):
            opts += ["--extra-index-url", url]
    return opts


def pip_wheel(into: Path) -> str:
    """A pip wheel for the build context (the sandbox image has python3 but no pip): the one
    bundled with this Python, else one downloaded through the host's pip."""
    import ensurepip

    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if bundled:
        shutil.copy(bundled[-1], into / bundled[-1].name)
        return bundled[-1].name
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary", ":all:", "-d", str(into), "pip"], check=True,
                   capture_output=True)
    return next(into.glob("pip-*.whl")).name


def ensure_image(client: Any, version: str) -> str:
    """``pyflue/swerex-bench`` with this swe-rex version: reused when present, else built."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        image = client.images.get(IMAGE)
        if image.labels.get(VERSION_LABEL) == version:
            return "reused"
        say(f"{IMAGE} has swe-rex {image.labels.get(VERSION_LABEL)}, not {version}: rebuilding")
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        raise SetupError(f"cannot build {IMAGE}: its base {BASE} is missing "
                         "(./scripts/setup builds it)") from None
    if not CA_BUNDLE.is_file():
        raise SetupError(f"cannot build {IMAGE}: no CA bundle at {CA_BUNDLE} to hand pip")
    ctx = Path(tempfile.mkdtemp(prefix="pyflue-swerex-image-", dir="/tmp"))
    try:
        shutil.copy(CA_BUNDLE, ctx / "ca.crt")
        wheel = pip_wheel(ctx)
        index = " ".join(f"'{o}'" for o in pip_index_options())
        (ctx / "Dockerfile").write_text(
            f"FROM {BASE}\n"
            "USER root\n"
            f"COPY ca.crt {wheel} /tmp/swerex-build/\n"
            # pip run from its wheel, into /usr/local; the image's Python is Debian's
            f"RUN python3 /tmp/swerex-build/{wheel}/pip install --no-cache-dir -q "
            "--disable-pip-version-check --root-user-action=ignore --break-system-packages "
            f"--cert /tmp/swerex-build/ca.crt {index} swe-rex=={version} "
            "&& rm -rf /tmp/swerex-build && swerex-remote --version\n"
            f'LABEL {VERSION_LABEL}="{version}"\n'
            "USER 1000:1000\n"
            "WORKDIR /workspace\n")
        say(f"building {IMAGE} from {BASE} with swe-rex {version} (once) ...")
        said = ""  # pip's own error line, when it gives one
        for chunk in client.api.build(path=str(ctx), tag=IMAGE, rm=True, forcerm=True,
                                      decode=True):
            for line in str(chunk.get("stream", "")).splitlines():
                if line.startswith("ERROR:") and not said:
                    said = line.removeprefix("ERROR:").strip()
            if "error" in chunk:
                why = f"pip: {said}" if said else chunk["error"].strip().splitlines()[-1]
                raise SetupError(f"building {IMAGE} failed: {why}")
    except subprocess.CalledProcessError as exc:
        raise SetupError(f"building {IMAGE} failed: no pip wheel for the build context "
                         f"({(exc.stderr or b'').decode().strip()[-200:]})") from None
    except docker.errors.DockerException as exc:
        raise SetupError(f"building {IMAGE} failed: {exc}") from None
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return "built"


def remove_leftovers(client: Any) -> int:
    """Removes SWE-ReX containers this benchmark started that are still there."""
    left = client.api.containers(all=True, filters={"label": MARK})
    for c in left:
        with contextlib.suppress(docker.errors.DockerException):
            client.api.remove_container(c["Id"], force=True)
    return len(left)


# -- SWE-ReX on its own loop ---------------------------------------------------------------


class SideLoop:
    """An event loop in a thread, for SWE-ReX's calls: each is timed there, while the main
    loop (pyflue's) is free, as bench_sandbox.py's raw docker-py calls run on a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="swerex", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class Swerex:
    """SWE-ReX deployments on the side loop; stop_all() stops every one still up."""

    def __init__(self, rex: SimpleNamespace, side: SideLoop) -> None:
        self.rex, self.side = rex, side
        self.live: set[Any] = set()

    def deployment(self) -> Any:
        return self.rex.DockerDeployment(
            image=IMAGE, pull="never", python_standalone_dir=None,
            docker_args=["--label", f"{MARK}=1"])

    async def _start(self, dep: Any) -> float:
        self.live.add(dep)
        t0 = time.perf_counter()
        await dep.start()
        return time.perf_counter() - t0

    async def start(self) -> Any:
        dep = self.deployment()
        await self.side.call(self._start(dep))
        return dep

    async def stop(self, dep: Any) -> None:
        """dep.stop(), which never raises here: a container it leaves is removed by label
        (on Ctrl-C, SWE-ReX's `docker run` child gets the signal too, and its server may be
        gone before stop() asks it to close)."""
        async def go() -> None:
            try:
                await dep.stop()
            except Exception as exc:
                say(f"  SWE-ReX deployment.stop() failed: {type(exc).__name__}: {exc}")
            finally:
                self.live.discard(dep)
        await self.side.call(go())

    async def stop_all(self) -> None:
        for dep in list(self.live):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stop(dep), 30)

    async def cold_start(self) -> tuple[float, float]:
        """(until the runtime answers, until the first `true` has answered), in seconds."""
        dep = self.deployment()
        rex = self.rex

        async def go() -> tuple[float, float]:
            t0 = time.perf_counter()
            ready = await self._start(dep)
            res = await dep.runtime.execute(rex.Command(command="true", shell=True))
            first = time.perf_counter() - t0
            if res.exit_code != 0:
                raise RuntimeError(f"SWE-ReX execute('true') exited {res.exit_code}")
            return ready, first

        try:
            result: tuple[float, float] = await self.side.call(go())
        finally:
            await self.stop(dep)
        return result

    def clocked(self, make: Callable[[], Coroutine[Any, Any, Any]],
                check: Callable[[Any], bool]) -> Callable[[], Awaitable[float]]:
        """A timed SWE-ReX call on the side loop, its answer checked."""
        async def go() -> float:
            t0 = time.perf_counter()
            got = await make()
            elapsed = time.perf_counter() - t0
            if not check(got):
                raise RuntimeError(f"unexpected SWE-ReX answer: {got!r}"[:300])
            return elapsed

        async def call() -> float:
            return float(await self.side.call(go()))
        return call


# -- the benchmark -------------------------------------------------------------------------


async def interleaved(i: int, rex: Callable[[], Awaitable[Any]],
                      ours: Callable[[], Awaitable[Any]]) -> tuple[Any, Any]:
    """One SWE-ReX and one pyflue iteration, SWE-ReX first on even i, pyflue first on odd i."""
    if i % 2 == 0:
        r = await rex()
        return r, await ours()
    p = await ours()
    return await rex(), p


def summary(name: str, rex: list[float], ours: list[float]) -> dict[str, Any]:
    r50, p50 = statistics.median(rex), statistics.median(ours)
    return {"name": name, "n": len(ours),
            "swerex_p50_ms": r50 * 1e3, "swerex_p90_ms": p90(rex) * 1e3,
            "pyflue_p50_ms": p50 * 1e3, "pyflue_p90_ms": p90(ours) * 1e3,
            "ratio": p50 / r50}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rex = load_swerex()
    client = docker.from_env(timeout=120)
    tmp = Path(tempfile.mkdtemp(prefix="pyflue-bench-", dir="/tmp"))
    side = SideLoop()
    swerex = Swerex(rex, side)
    results: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    try:
        env = machine(client, docker_py=docker.__version__, swerex=rex.version,
                      image=args.image_state)
        say(f"machine: {json.dumps(env)}")
        (tmp / "workflows").mkdir()
        (tmp / "workflows" / "bench_session.py").write_text(SESSION_WORKFLOW)
        settings = Settings(project_dir=tmp, store_url=f"sqlite+aiosqlite:///{tmp / 'b.db'}")
        async with open_runner(settings) as runner:
            module = runner.registry.get("bench_session").module

            async def run_with(callback: Any) -> None:
                setattr(module, "CALLBACK", callback)  # noqa: B010
                run = await runner.run("bench_session", {})
                if run.status is not RunStatus.completed:
                    raise await run_failed(runner, run)

            # (start): cold starts, interleaved
            say(f"(start) {args.starts} pairs (+{args.warmup_starts} warm-up)")
            rex_ready: list[float] = []
            rex_first: list[float] = []
            py_ready: list[float] = []
            py_first: list[float] = []

            async def pyflue_cold() -> tuple[float, float]:
                marks: dict[str, float] = {}

                async def first(ctx: Any, harness: Any) -> dict[str, Any]:
                    marks["ready"] = time.perf_counter()
                    res = await harness.shell("true")
                    marks["first"] = time.perf_counter()
                    assert res["exit_code"] == 0, res
                    return {"ok": True}

                t0 = time.perf_counter()
                await run_with(first)
                return marks["ready"] - t0, marks["first"] - t0

            for i in range(args.warmup_starts + args.starts):
                (rr, rf), (pr, pf) = await interleaved(i, swerex.cold_start, pyflue_cold)
                if i >= args.warmup_starts:
                    rex_ready.append(rr)
                    rex_first.append(rf)
                    py_ready.append(pr)
                    py_first.append(pf)
                say(f"  (start) {i + 1}/{args.warmup_starts + args.starts}: SWE-ReX "
                    f"{rf * 1e3:.0f} ms, pyflue {pf * 1e3:.0f} ms")
            results["start-ready"] = summary("start-ready", rex_ready, py_ready)
            results["start-first"] = summary("start-first", rex_first, py_first)

            # the small calls: one deployment, one run's container
            say(f"(execute, session, 1k-write, 1k-read) {args.n} pairs each "
                f"(+{args.warmup} warm-up)")
            dep = await swerex.start()
            runtime = dep.runtime
            await side.call(runtime.create_session(rex.CreateBashSessionRequest()))
            text = os.urandom(512).hex()  # 1 KiB; SWE-ReX's files are text
            data = text.encode()
            rex_path = "/workspace/swerex-1k.txt"

            async def session(ctx: Any, harness: Any) -> dict[str, Any]:
                async def pairs(name: str, r: Callable[[], Awaitable[float]],
                                p: Callable[[], Awaitable[float]]) -> None:
                    rt: list[float] = []
                    pt: list[float] = []
                    for i in range(args.warmup + args.n):
                        a, b = await interleaved(i, r, p)
                        if i >= args.warmup:
                            rt.append(a)
                            pt.append(b)
                    results[name] = s = summary(name, rt, pt)
                    say(f"  {name}: SWE-ReX {s['swerex_p50_ms']:.2f} ms, pyflue "
                        f"{s['pyflue_p50_ms']:.2f} ms (p50 of {args.n})")

                async def shell() -> float:
                    elapsed, res = await timed(harness.shell("true"))
                    if res["exit_code"] != 0:
                        raise RuntimeError(f"harness.shell('true') exited {res['exit_code']}")
                    return float(elapsed)

                async def write() -> float:
                    return float((await timed(harness.fs.write_file("pyflue-1k.txt", data)))[0])

                async def read() -> float:
                    elapsed, got = await timed(harness.fs.read_bytes("pyflue-1k.txt"))
                    if got != data:
                        raise RuntimeError("pyflue read back different bytes")
                    return float(elapsed)

                await pairs("execute", swerex.clocked(
                    lambda: runtime.execute(rex.Command(command="true", shell=True)),
                    lambda r: r.exit_code == 0), shell)
                await pairs("session", swerex.clocked(
                    lambda: runtime.run_in_session(rex.BashAction(command="true")),
                    lambda r: r.exit_code == 0), shell)
                await pairs("1k-write", swerex.clocked(
                    lambda: runtime.write_file(rex.WriteFileRequest(content=text,
                                                                    path=rex_path)),
                    lambda r: True), write)
                await pairs("1k-read", swerex.clocked(
                    lambda: runtime.read_file(rex.ReadFileRequest(path=rex_path)),
                    lambda r: r.content == text), read)
                await asyncio.sleep(2)  # both containers idle
                extra["idle_mib"] = {
                    "swerex": idle_mib(client, dep.container_name),
                    "pyflue": idle_mib(client, harness.sandbox_id)}
                say(f"  idle memory: SWE-ReX {extra['idle_mib']['swerex']:.1f} MiB, pyflue "
                    f"{extra['idle_mib']['pyflue']:.1f} MiB")
                return {"ok": True}

            await run_with(session)
    finally:
        try:
            await swerex.stop_all()
        finally:
            side.close()
            left = remove_leftovers(client)
            if left:
                say(f"removed {left} SWE-ReX container(s) left behind")
            client.close()
            shutil.rmtree(tmp, ignore_errors=True)
    env["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": env, "results": results, **extra}


def fmt_table(rows: list[dict[str, Any]]) -> str:
    labels = {
        "start-ready": "start: until ready",
        "start-first": "start: + first `true`",
        "execute": "`true`: execute / shell",
        "session": "`true`: bash session / shell",
        "1k-write": "1 KiB write_file",
        "1k-read": "1 KiB read_file",
    }
    head = ("bench", "n", "SWE-ReX p50", "SWE-ReX p90", "pyflue p50", "pyflue p90",
            "pyflue/SWE-ReX")
    lines = [(labels[r["name"]], str(r["n"]), f"{r['swerex_p50_ms']:.2f} ms",
              f"{r['swerex_p90_ms']:.2f} ms", f"{r['pyflue_p50_ms']:.2f} ms",
              f"{r['pyflue_p90_ms']:.2f} ms", f"{r['ratio']:.3f}x") for r in rows]
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    ap.add_argument("--n", type=int, help="pairs for each small call (default 100, quick 10)")
    ap.add_argument("--starts", type=int, help="cold-start pairs (default 15, quick 2)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="discarded small-call pairs first (default 3)")
    ap.add_argument("--warmup-starts", type=int, default=1,
                    help="discarded cold-start pairs first (default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = ap.parse_args(argv)
    args.n = args.n or (10 if args.quick else 100)
    args.starts = args.starts or (2 if args.quick else 15)
    if min(args.n, args.starts) < 1 or min(args.warmup, args.warmup_starts) < 0:
        ap.error("counts must be positive")
    try:
        rex = load_swerex()
        client = docker.from_env(timeout=600)
        try:
            args.image_state = ensure_image(client, rex.version)
        finally:
            client.close()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report, code = run_benchmark(main_async, args, "benchmarks/bench_swerex.py", argv)
    if report is None:
        return code
    m = report["machine"]
    print(f"machine: nproc {m['nproc']}, Docker {m['docker_server_version']}, kernel "
          f"{m['kernel']}, Python {m['python']}, swe-rex {m['swerex']} (image {m['image']}); "
          f"load avg before {m['load_avg_before']} after {m['load_avg_after']}; "
          f"{report['wall_s']} s")
    print()
    print(fmt_table(list(report["results"].values())))
    mem = report.get("idle_mib")
    if mem:
        print()
        print(f"idle container memory (usage less inactive file): SWE-ReX "
              f"{mem['swerex']:.1f} MiB, pyflue {mem['pyflue']:.1f} MiB")
    print()
    print("pyflue/SWE-ReX: the ratio of the p50s (below 1: pyflue is faster).")
    if args.quick:
        print("(--quick: too few iterations to judge)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
