"""Metrics, traces and resources without Docker: the /metrics guard, one registry per app, the
trace context rules, the resource samples kept by every store, and `pyflue show`'s line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from pyflue.api.app import create_app
from pyflue.client import PyFlueClient
from pyflue.models import ResourceSummary
from pyflue.render import resources_line
from pyflue.resources import ResourceSample
from pyflue.sandbox.base import PoolFill
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ObservabilitySettings, ServerSettings, Settings
from pyflue.store import MemoryStore
from pyflue.tracing import parse_traceparent, tracing_wanted
from tests.conftest import WriteWorkflow

TOKEN = "metrics-test-token-1234"
HELLO = """
    async def run(ctx):
        return {"hello": ctx.payload.get("name", "world")}
    """


def _settings(project: Path, *, public: bool = False, token: bool = True,
              metrics: bool = True, worker: str = "w1") -> Settings:
    return Settings(project_dir=project,
                    server=ServerSettings(api_token=SecretStr(TOKEN) if token else None),
                    observability=ObservabilitySettings(metrics=metrics, metrics_public=public,
                                                        worker_name=worker))


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.fixture(autouse=True)
def _hello(write_workflow: WriteWorkflow) -> None:
    write_workflow("hello", HELLO)


def _started(text: str, worker: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "pyflue_runs_started_total" and s.labels["worker"] == worker)


async def test_metrics_need_the_api_token(project: Path) -> None:
    app = create_app(_settings(project), store=MemoryStore(), provider=FakeSandboxProvider())
    async for client in _client(app):
        refused = await client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200


async def test_public_metrics_need_no_token_while_the_api_still_does(project: Path) -> None:
    app = create_app(_settings(project, public=True), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async for client in _client(app):
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/runs")).status_code == 401


async def test_metrics_turned_off_are_not_served(project: Path) -> None:
    app = create_app(_settings(project, token=False, metrics=False), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async for client in _client(app):
        assert (await client.get("/metrics")).status_code == 404


async def test_two_apps_in_one_process_count_their_own_runs(project: Path) -> None:
    one = create_app(_settings(project, token=False, worker="one"), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    two = create_app(_settings(project, token=False, worker="two"), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async for first in _client(one):
        async for second in _client(two):
            for _ in range(3):
                answer = await first.post("/workflows/hello?wait=result", json={})
                assert answer.status_code == 200
            await second.post("/workflows/hello?wait=result", json={})
            one_text = (await first.get("/metrics")).text
            two_text = (await second.get("/metrics")).text
    assert _started(one_text, "one") == 3 and _started(one_text, "two") == 0
    assert _started(two_text, "two") == 1 and _started(two_text, "one") == 0


async def test_a_run_without_a_container_has_no_resources(project: Path) -> None:
    app = create_app(_settings(project, token=False), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async for client in _client(app):
        run_id = (await client.post("/workflows/hello?wait=result", json={})).json()["run_id"]
        body = (await client.get(f"/runs/{run_id}/metrics")).json()
        assert body == {"run_id": run_id, "status": "completed", "metrics": [],
                        "resources": None}
        assert (await client.get("/runs/workflow:hello:nope/metrics")).status_code == 404
        async with PyFlueClient("http://test", transport=httpx.ASGITransport(app=app)) as py:
            answer = await py.runs.metrics(run_id)
        assert answer.run_id == run_id and answer.metrics == [] and answer.resources is None


def test_a_traceparent_is_read_as_the_w3c_rule_says() -> None:
    parent = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert parent is not None and parent.sampled
    assert parent.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parent.header == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for bad in ("", "nonsense", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None


def test_traces_are_off_unless_the_otel_variables_ask() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "none",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_wanted({"OTEL_SDK_DISABLED": "true",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})


def test_running_a_workflow_untraced_imports_nothing_of_opentelemetry() -> None:
    code = ("import sys, pyflue.runs, pyflue.wiring, pyflue.tracing\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    # Isolated (-I): the suite's own sys.path carries every workflow root earlier tests loaded.
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_samples_have_the_e2b_shape() -> None:
    sample = ResourceSample.model_validate({
        "timestamp": "2026-01-01T00:00:00Z", "cpuCount": 1, "cpuUsedPct": 12.5,
        "memUsed": 10, "memTotal": 20, "diskUsed": None, "diskTotal": None})
    assert list(sample.model_dump(mode="json")) == [
        "timestamp", "cpuCount", "cpuUsedPct", "memUsed", "memTotal", "diskUsed", "diskTotal"]


def test_show_prints_the_resource_summary_on_one_line() -> None:
    line = resources_line(ResourceSummary(
        samples=3, peak_memory_bytes=210 * 1024**2, memory_limit_bytes=2 * 1024**3,
        cpu_seconds=0.4123, disk_used_bytes=5 * 1024**2, disk_total_bytes=1024**3,
        bytes_in=0, bytes_out=0, file_bytes_in=1000, file_bytes_out=12))
    assert line == ("peak memory 210.0 MiB of 2.0 GiB, CPU 0.41 s, disk 5.0 MiB of 1.0 GiB, "
                    "net in 0 B out 0 B, files in 1000 B out 12 B")
    assert resources_line(None) is None


async def test_a_traceparent_is_kept_in_the_run_record_even_untraced(project: Path) -> None:
    app = create_app(_settings(project, token=False), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async for client in _client(app):
        continued = await client.post("/workflows/hello?wait=result", json={},
                                      headers={"traceparent": header})
        ignored = await client.post("/workflows/hello?wait=result", json={},
                                    headers={"traceparent": "00-bad-header-01"})
        one = (await client.get(f"/runs/{continued.json()['run_id']}")).json()
        two = (await client.get(f"/runs/{ignored.json()['run_id']}")).json()
    assert one["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert one["traceparent"] == header
    assert two["trace_id"] is None and two["traceparent"] is None  # no tracing, no trace


class PooledFake(FakeSandboxProvider):
    def pool_fills(self) -> list[PoolFill]:
        return [PoolFill(image="pyflue/sandbox:latest", size=3, ready=2, starting=1)]


async def test_the_pool_fill_and_slots_are_read_when_scraped(project: Path) -> None:
    app = create_app(_settings(project, token=False), store=MemoryStore(),
                     provider=PooledFake())
    async for client in _client(app):
        text = (await client.get("/metrics")).text
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    pool = {dict(labels)["state"]: v for (name, labels), v in values.items()
            if name == "pyflue_pool_containers"
            and dict(labels)["image"] == "pyflue/sandbox:latest"}
    assert pool == {"size": 3, "ready": 2, "starting": 1}
    slots = {dict(labels)["state"]: v for (name, labels), v in values.items()
             if name == "pyflue_scheduler_slots"}
    assert slots == {"total": 4, "busy": 0}
