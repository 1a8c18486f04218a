"""Prometheus metrics of the service, served at ``GET /metrics`` in the text format.

Job, sample and cache counters live in Redis (the ``magic:metrics`` hash that
``Store`` increments), so they count the work of every service process and
every replay worker on the cluster and survive restarts. Every replica of the
API therefore reports the same totals: scrape one replica, or aggregate with
``max`` rather than ``sum``. HTTP request counts are per process.

The figures that the replay workers export through ``ray.util.metrics``
(samples per second, replay step time, queue depth) appear on the Ray
dashboard and Ray's own metrics endpoint, not here.
"""

from __future__ import annotations

from typing import Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .keys import JobStatus
from .store import Store

METRICS_PATH = "/metrics"
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class StoreCollector(Collector):
    """Reads the job, sample and cache counters and the active job count from Redis per scrape."""

    def __init__(self, get_store: Callable[[], Store]) -> None:
        self._get_store = get_store

    def collect(self) -> Iterator[Metric]:
        store = self._get_store()
        totals = store.metric_totals()
        yield CounterMetricFamily("magic_jobs_submitted", "Attribution jobs submitted",
                                  value=totals.get("jobs_submitted", 0))
        finished = CounterMetricFamily("magic_jobs_finished",
                                       "Attribution jobs that reached a final status",
                                       labels=["status"])
        for status in FINISHED_STATUSES:
            finished.add_metric([status.value], totals.get(f"jobs_{status.value}", 0))
        yield finished
        yield CounterMetricFamily("magic_samples_replayed",
                                  "Test samples whose scores replay workers computed",
                                  value=totals.get("samples_replayed", 0))
        yield CounterMetricFamily("magic_cache_hits",
                                  "Test samples of finished jobs that were already cached",
                                  value=totals.get("cache_hits", 0))
        yield CounterMetricFamily("magic_cache_misses",
                                  "Test samples of finished jobs that needed a reverse pass",
                                  value=totals.get("cache_misses", 0))
        yield GaugeMetricFamily("magic_active_jobs", "Attribution jobs queued or running",
                                value=store.active_job_count())


class ServiceMetrics:
    """The registry behind one application's ``/metrics`` route."""

    def __init__(self, get_store: Callable[[], Store]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(get_store))
        self.requests = Counter("magic_http_requests", "HTTP requests answered by this process",
                                ["method", "route", "status"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def install(app: FastAPI) -> ServiceMetrics:
    """Add the ``/metrics`` route and a request-counting middleware to ``app``.

    The store is read from ``app.state.store`` at scrape time, because the
    lifespan creates it after the application is built.
    """
    service_metrics = ServiceMetrics(lambda: app.state.store)
    app.state.metrics = service_metrics

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        status_code = 500
        try:
            response = await call_next(request)
            status_code = response.status_code
            return response
        finally:
            # The route template, not the raw path, keeps the label set small.
            template = getattr(request.scope.get("route"), "path", "unmatched")
            service_metrics.requests.labels(request.method, template, str(status_code)).inc()

    @app.get(METRICS_PATH, include_in_schema=False)
    def metrics() -> Response:
        return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return service_metrics
