"""Per-step metrics to JSONL, TensorBoard and OpenTelemetry; phases timed as spans.

``otel``: ``none`` (default), ``console`` (spans and metrics printed), or ``otlp`` (OTLP/HTTP to
``otlp_endpoint``, or to ``OTEL_EXPORTER_OTLP_ENDPOINT`` when that is set).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field


class LoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensorboard: bool = Field(True, description="Write TensorBoard scalars under {out}/tensorboard.")
    otel: Literal["none", "console", "otlp"] = Field("none", description="OpenTelemetry export.")
    otlp_endpoint: str | None = Field(None, description="e.g. http://otel-collector:4318 (otel=otlp).")
    service_name: str = "m3ad-rl"


class Tracker:
    """One run's metric sinks. ``log(step, metrics)`` writes a JSONL line ``{"step": s, ...}``."""

    def __init__(self, out: str, cfg: LoggingConfig, run_name: str, resume_step: int = 0):
        self.cfg, self.path = cfg, f"{out.rstrip('/')}/metrics.jsonl"
        self._keep_only_until(resume_step)
        self.tb = None
        if cfg.tensorboard and "://" not in out:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=resume_step + 1)
        self.tracer, self.meter, self._gauges = None, None, {}
        if cfg.otel != "none":
            self._setup_otel(run_name)

    def _keep_only_until(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they are about to be redone)."""
        fs, path = fsspec.core.url_to_fs(self.path)
        self._local = isinstance(fs, LocalFileSystem)
        self._lines: list[str] = []
        if not fs.exists(path):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            return
        with fs.open(path) as fh:
            lines = [ln for ln in fh.read().decode().splitlines() if ln.strip()]
        self._lines = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        with fs.open(path, "w") as fh:
            fh.write("".join(ln + "\n" for ln in self._lines))

    def _setup_otel(self, run_name: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        res = Resource.create({"service.name": self.cfg.service_name, "m3ad.run": run_name})
        if self.cfg.otel == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = (self.cfg.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).rstrip("/")
            span_exp = OTLPSpanExporter(endpoint=f"{base}/v1/traces") if base else OTLPSpanExporter()
            metric_exp = OTLPMetricExporter(endpoint=f"{base}/v1/metrics") if base else OTLPMetricExporter()
        else:
            span_exp, metric_exp = ConsoleSpanExporter(), ConsoleMetricExporter()
        tp = TracerProvider(resource=res)
        tp.add_span_processor(BatchSpanProcessor(span_exp))
        mp = MeterProvider(resource=res, metric_readers=[PeriodicExportingMetricReader(metric_exp, 60_000)])
        self._providers = (tp, mp)
        self.tracer, self.meter = tp.get_tracer("m3ad_rl"), mp.get_meter("m3ad_rl")

    @contextlib.contextmanager
    def span(self, name: str, timings: dict[str, float] | None = None, **attrs) -> Iterator[None]:
        """Time a block (into ``timings['timing/<name>_s']``) and record it as an OpenTelemetry span."""
        t0 = time.perf_counter()
        cm = self.tracer.start_as_current_span(name, attributes=attrs) if self.tracer else contextlib.nullcontext()
        with cm:
            yield
        if timings is not None:
            timings[f"timing/{name}_s"] = time.perf_counter() - t0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in sorted(metrics.items())}}
        self._lines.append(json.dumps(row))
        if self._local:
            with fsspec.open(self.path, "a") as fh:
                fh.write(self._lines[-1] + "\n")
        else:  # object stores cannot append: rewrite the (small) file
            with fsspec.open(self.path, "w") as fh:
                fh.write("".join(ln + "\n" for ln in self._lines))
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.meter is not None:
            for k, v in metrics.items():
                name = "m3ad." + k.replace("/", ".")
                if name not in self._gauges:
                    self._gauges[name] = self.meter.create_gauge(name)
                self._gauges[name].set(float(v), {"step": step})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for p in getattr(self, "_providers", ()):
            p.shutdown()


def read_metrics(out: str) -> list[dict]:
    """The JSONL rows of a run, in step order."""
    with fsspec.open(f"{out.rstrip('/')}/metrics.jsonl") as fh:
        return [json.loads(ln) for ln in fh.read().decode().splitlines() if ln.strip()]
