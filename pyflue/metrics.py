"""Prometheus metrics of a server: its runs, containers, store and models (docs/observability.md).

Each app builds its own :class:`Metrics` with a registry of its own (never the process-wide
default one), so several apps in one process keep apart. Run-level series come from the runs'
events through one observer (:meth:`Metrics.began`, see :mod:`pyflue.observe`); the gauges of
the moment (runs queued and running, scheduler slots, the warm pool's fill) are read when
scraped. Labels stay few and bounded: ``worker`` (this server, PYFLUE_WORKER_NAME), and where
it fits ``workflow``, ``status``, ``launch``, ``direction``, ``op``, ``model``, ``kind``,
``image``, ``state``; never a run id or free text.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from pyflue.events import (
    ContainerStarted,
    EventData,
    FileOp,
    FileRead,
    FileWrite,
    ModelTurnEnd,
    ShellEnd,
)
from pyflue.models import Run, RunStatus
from pyflue.sandbox.base import PoolFill

# Seconds: from a few milliseconds (a warm start, a store write) to an hour's run.
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def default_worker() -> str:
    """This process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Metrics:
    """The registry of one app and its series."""

    def __init__(self, worker: str | None = None) -> None:
        self.worker = worker or default_worker()
        self.registry = CollectorRegistry()
        r, w = self.registry, ["worker"]
        self.runs_started = Counter("pyflue_runs_started", "Runs that started executing on "
                                    "this worker", [*w, "workflow"], registry=r)
        self.runs_ended = Counter("pyflue_runs_ended", "Runs that ended on this worker, by "
                                  "final status", [*w, "workflow", "status"], registry=r)
        self.queue_wait = Histogram("pyflue_run_queue_wait_seconds", "Time from a run's "
                                    "creation to its start", [*w, "workflow"], buckets=SLOW,
                                    registry=r)
        self.run_duration = Histogram("pyflue_run_duration_seconds", "Run duration, container "
                                      "removal included", [*w, "workflow", "status"],
                                      buckets=SLOW, registry=r)
        self.container_start = Histogram("pyflue_container_start_seconds", "Time from asking "
                                         "for a run's container to its being ready",
                                         [*w, "launch"], buckets=FAST, registry=r)
        self.exec_duration = Histogram("pyflue_exec_duration_seconds", "Duration of shell "
                                       "calls in run containers", w, buckets=SLOW, registry=r)
        self.file_bytes = Counter("pyflue_file_copy_bytes", "Bytes copied into (`in`) and out "
                                  "of (`out`) run containers", [*w, "direction"], registry=r)
        self.store_write = Histogram("pyflue_store_write_seconds", "Latency of the run "
                                     "store's writes for runs", [*w, "op"], buckets=FAST,
                                     registry=r)
        self.model_tokens = Counter("pyflue_model_tokens", "Model tokens used, by model and "
                                    "kind", [*w, "model", "kind"], registry=r)
        self.running = Gauge("pyflue_runs_running", "Runs executing on this worker now", w,
                             registry=r)
        self.queued = Gauge("pyflue_runs_queued", "Runs waiting in the queue now (all "
                            "workers sharing the store)", w, registry=r)
        self.running.labels(self.worker).set(0)
        self._moment = _Moment(self.worker)
        self.registry.register(self._moment)

    def watch_server(self, slots: Callable[[], tuple[int, int]],
                     pools: Callable[[], list[PoolFill]]) -> None:
        """Reads, when scraped, the scheduler's slots (total, busy) and the pool's fill."""
        self._moment.slots = slots
        self._moment.pools = pools

    def began(self, run: Run) -> _RunMetrics:
        """The observer of a run starting here (:mod:`pyflue.observe`)."""
        w = self.worker
        self.runs_started.labels(w, run.workflow).inc()
        self.running.labels(w).inc()
        if run.started_at is not None:
            wait = (run.started_at - run.created_at).total_seconds()
            self.queue_wait.labels(w, run.workflow).observe(max(wait, 0.0))
        return _RunMetrics(self)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _RunMetrics:
    """One run's events into the series."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._done = False

    def event(self, data: EventData, clean: Mapping[str, Any], at: datetime) -> None:
        m, w = self.m, self.m.worker
        if isinstance(data, ShellEnd):
            m.exec_duration.labels(w).observe(data.duration_ms / 1000)
        elif isinstance(data, ContainerStarted) and data.start_ms is not None:
            m.container_start.labels(w, data.launch).observe(data.start_ms / 1000)
        elif isinstance(data, FileWrite):
            m.file_bytes.labels(w, "in").inc(data.bytes)
        elif isinstance(data, FileRead):
            m.file_bytes.labels(w, "out").inc(data.bytes)
        elif isinstance(data, FileOp) and data.bytes and data.op in ("upload", "download"):
            m.file_bytes.labels(w, "in" if data.op == "upload" else "out").inc(data.bytes)
        elif isinstance(data, ModelTurnEnd) and data.usage is not None:
            usage = data.usage
            for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens),
                                ("cache_creation", usage.cache_creation_input_tokens),
                                ("cache_read", usage.cache_read_input_tokens)):
                if count:
                    m.model_tokens.labels(w, data.model, kind).inc(count)

    def store_write(self, op: str, seconds: float) -> None:
        self.m.store_write.labels(self.m.worker, op).observe(seconds)

    def ended(self, run: Run) -> None:
        if self._done:
            return
        self._done = True
        m, w = self.m, self.m.worker
        m.running.labels(w).dec()
        status = "requeued" if run.status is RunStatus.queued else run.status.value
        m.runs_ended.labels(w, run.workflow, status).inc()
        if run.duration_ms is not None and run.status is not RunStatus.queued:
            m.run_duration.labels(w, run.workflow, status).observe(run.duration_ms / 1000)


class _Moment(Collector):
    """Gauges read when scraped: scheduler slots, the warm pool's fill."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.slots: Callable[[], tuple[int, int]] | None = None
        self.pools: Callable[[], list[PoolFill]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slots = GaugeMetricFamily("pyflue_scheduler_slots", "The scheduler's run slots: "
                                  "`total`, `busy`", labels=["worker", "state"])
        if self.slots is not None:
            total, busy = self.slots()
            slots.add_metric([self.worker, "total"], total)
            slots.add_metric([self.worker, "busy"], busy)
        yield slots
        pool = GaugeMetricFamily("pyflue_pool_containers", "The warm pool per image: "
                                 "containers wanted (`size`), `ready`, `starting`; `egress`: "
                                 "the pool for runs with egress",
                                 labels=["worker", "image", "state", "egress"])
        for fill in self.pools() if self.pools is not None else []:
            for state in ("size", "ready", "starting"):
                pool.add_metric([self.worker, fill.image, state, str(fill.egress).lower()],
                                getattr(fill, state))
        yield pool
