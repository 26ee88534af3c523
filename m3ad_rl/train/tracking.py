"""Per-step metrics to ``metrics.jsonl`` and the chosen backends; phases timed as spans.

Every backend has the same small interface (``Backend``): ``log_params`` once at the start, ``log`` at
each logged step, ``close`` at the end. ``logging.backends`` chooses them:

- ``jsonl``: ``{out}/metrics.jsonl``, one ``{"step": s, ...}`` line a step; always written (resume and
  ``m3ad-rl train sft`` read it back).
- ``tensorboard``: scalars under ``{out}/tensorboard`` (on a storage URL: written locally, copied there each step).
- ``mlflow``: an MLflow run (package ``mlflow-skinny``) in ``logging.mlflow_tracking_uri``, by default
  the file store ``{out}/mlruns`` (``mlflow ui --backend-store-uri {out}/mlruns`` shows it).
- ``wandb``: a Weights & Biases run in offline mode under ``logging.wandb_dir`` (default ``out``); it
  never touches the network, ``wandb sync {dir}/wandb/offline-run-*`` uploads it later.

``otel`` is separate, as it also traces: ``none`` (default), ``console`` (spans and metrics printed), or
``otlp`` (OTLP/HTTP to ``otlp_endpoint``, or to ``OTEL_EXPORTER_OTLP_ENDPOINT`` when that is set).

On resume (``resume_step`` > 0) JSONL and TensorBoard drop the steps after the checkpoint; MLflow and
W&B continue the same run (its id is kept in ``{out}/{backend}_run_id``) and keep both values of a
redone step.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, model_validator

from m3ad_rl.core.errors import UsageError

BackendName = Literal["jsonl", "tensorboard", "mlflow", "wandb"]


class LoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[BackendName] = Field(
        ["jsonl", "tensorboard"], description="Metric sinks; jsonl is written whether listed or not."
    )
    tensorboard: bool | None = Field(
        None, description="Older switch: true adds tensorboard to backends, false drops it."
    )
    experiment: str = Field("m3ad-rl", description="The MLflow experiment and the W&B project.")
    mlflow_tracking_uri: str | None = Field(
        None, description="Default file:{out}/mlruns; or sqlite:///…, or http://… (a tracking server)."
    )
    wandb_dir: str | None = Field(None, description="Local folder for W&B's offline runs (default: out).")
    otel: Literal["none", "console", "otlp"] = Field("none", description="OpenTelemetry export.")
    otlp_endpoint: str | None = Field(None, description="e.g. http://otel-collector:4318 (otel=otlp).")
    service_name: str = "m3ad-rl"

    @model_validator(mode="after")
    def _apply_tensorboard_switch(self) -> LoggingConfig:
        """Configs written before ``backends`` say ``tensorboard: false``; that must keep working."""
        if self.tensorboard is not None:
            rest = [b for b in self.backends if b != "tensorboard"]
            self.backends = [*rest, "tensorboard"] if self.tensorboard else rest
        return self


@dataclass(frozen=True)
class RunInfo:
    """What every backend is built from: the run folder (path or URL), a display name, the resumed step."""

    out: str
    name: str
    resume_step: int = 0

    @property
    def local(self) -> bool:
        return "://" not in self.out


class Backend(Protocol):
    """One metric sink."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _require(module: str, setting: str, pip_name: str, extra: str) -> ModuleType:
    """Import a backend's package, or say which one to install (a missing one would fail mid-run otherwise)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(
            f"{setting} needs the package {pip_name} ({e})",
            f"pip install {pip_name} (it is in the [{extra}] extra), or drop it from the config",
        ) from e


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"actor": {"optim": {"lr": 1e-6}}}`` → ``{"actor.optim.lr": 1e-6}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _saved_run_id(run: RunInfo, backend: str) -> str | None:
    """The id of the run a resumed job continues (None for a fresh job, or when none was saved)."""
    if run.resume_step <= 0:
        return None
    fs, p = fsspec.core.url_to_fs(f"{run.out}/{backend}_run_id")
    return fs.cat_file(p).decode().strip() if fs.exists(p) else None


def _save_run_id(run: RunInfo, backend: str, run_id: str) -> None:
    with fsspec.open(f"{run.out}/{backend}_run_id", "w") as fh:
        fh.write(run_id + "\n")


class JsonlBackend:
    """``{out}/metrics.jsonl``: the run's own record, on any fsspec URL."""

    def __init__(self, run: RunInfo, cfg: LoggingConfig):
        self.path = f"{run.out}/metrics.jsonl"
        self._keep_only_until(run.resume_step)

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

    def log_params(self, params: dict[str, Any]) -> None:
        """Nothing: the trainer writes ``config.json`` itself."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._lines.append(json.dumps({"step": step, **dict(sorted(metrics.items()))}))
        if self._local:
            with fsspec.open(self.path, "a") as fh:
                fh.write(self._lines[-1] + "\n")
        else:  # object stores cannot append: rewrite the (small) file
            with fsspec.open(self.path, "w") as fh:
                fh.write("".join(ln + "\n" for ln in self._lines))

    def close(self) -> None:
        pass


class TensorBoardBackend:
    """Scalars under ``{out}/tensorboard``; a resumed run purges the steps after its checkpoint.

    ``SummaryWriter`` writes local files only: with ``out`` on object storage the events are written to
    a local folder and each changed event file is copied to ``{out}/tensorboard/`` after every logged
    step, so ``tensorboard --logdir s3://…/tensorboard`` (or a synced copy) sees the run as it goes. A
    resumed run adds a new event file whose purge marker hides the old file's later steps.
    """

    def __init__(self, run: RunInfo, cfg: LoggingConfig):
        import tempfile

        tb = _require("torch.utils.tensorboard", "logging.backends: tensorboard", "tensorboard", "train")
        self.remote = None if run.local else f"{run.out.rstrip('/')}/tensorboard"
        self.dir = os.path.join(run.out, "tensorboard") if run.local else tempfile.mkdtemp(prefix="m3ad-tb-")
        self.writer = tb.SummaryWriter(self.dir, purge_step=run.resume_step + 1)
        self._sent: dict[str, int] = {}

    def _publish(self) -> None:
        """Copy the event files that grew since the last copy (one small PUT each)."""
        if self.remote is None:
            return
        fs, root = fsspec.core.url_to_fs(self.remote)
        for name in sorted(os.listdir(self.dir)):
            size = os.path.getsize(os.path.join(self.dir, name))
            if self._sent.get(name) != size:
                fs.put_file(os.path.join(self.dir, name), f"{root}/{name}")
                self._sent[name] = size

    def log_params(self, params: dict[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=1, default=str) + "\n```")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()
        self._publish()

    def close(self) -> None:
        self.writer.close()
        self._publish()
        if self.remote is not None:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


class MlflowBackend:
    """An MLflow run through ``MlflowClient`` (no global active run, so two trackers cannot mix)."""

    def __init__(self, run: RunInfo, cfg: LoggingConfig):
        uri = cfg.mlflow_tracking_uri
        if uri is None:
            if not run.local:
                raise UsageError(
                    f"logging.backends: mlflow keeps its file store under out, but out={run.out} is not local",
                    "set logging.mlflow_tracking_uri (e.g. http://mlflow:5000, or file:/a/local/folder)",
                )
            uri = "file:" + os.path.abspath(os.path.join(run.out, "mlruns"))
        # before the import: MLflow 3 starts its usage telemetry when imported, and from 3.7 refuses
        # the file store (in maintenance, still supported) unless asked for it
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _require("mlflow", "logging.backends: mlflow", "mlflow-skinny", "tracking")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        self.client, self.tracking_uri = MlflowClient(uri), uri
        self.run_id = _saved_run_id(run, "mlflow")
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
            self.run_id = self.client.create_run(exp_id, run_name=run.name, tags={"m3ad.out": run.out}).info.run_id
            _save_run_id(run, "mlflow", self.run_id)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params: dict[str, Any]) -> None:
        """Flat ``a.b.c`` keys; a resumed run adds only keys it lacks (MLflow forbids changing a param)."""
        have = self.client.get_run(self.run_id).data.params
        flat = {k: str(v)[:6000] for k, v in _flatten(params).items() if k not in have}
        items = [self._param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, ts, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbBackend:
    """A W&B run in offline mode: files under ``{wandb_dir}/wandb/offline-run-*``, nothing sent."""

    def __init__(self, run: RunInfo, cfg: LoggingConfig):
        folder = cfg.wandb_dir or run.out
        if "://" in folder:
            raise UsageError(
                f"logging.backends: wandb writes a local folder, but out={run.out} is not local",
                "set logging.wandb_dir to a local folder (a mounted volume on Kubernetes)",
            )
        os.makedirs(folder, exist_ok=True)
        wandb = _require("wandb", "logging.backends: wandb", "wandb", "tracking")
        run_id = _saved_run_id(run, "wandb")
        # offline for the whole process, not only this run: W&B 0.31's own usage analytics follow the
        # process's settings and would otherwise post to W&B's servers
        quiet = wandb.Settings(mode="offline", silent=True, console="off")
        wandb.setup(settings=quiet)
        self.run = wandb.init(
            mode="offline", dir=os.path.abspath(folder), project=cfg.experiment, name=run.name,
            id=run_id, resume="allow" if run_id else None, reinit="create_new", settings=quiet,
        )  # fmt: skip
        if run_id is None:
            _save_run_id(run, "wandb", self.run.id)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class OtelBackend:
    """OpenTelemetry: each metric a gauge ``m3ad.<name>``, and the tracer the phase spans use."""

    def __init__(self, run: RunInfo, cfg: LoggingConfig):
        _require("opentelemetry.sdk", f"logging.otel: {cfg.otel}", "opentelemetry-sdk", "train")
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        res = Resource.create({"service.name": cfg.service_name, "m3ad.run": run.name})
        if cfg.otel == "otlp":
            pkg = "opentelemetry-exporter-otlp-proto-http"
            _require("opentelemetry.exporter.otlp.proto.http", "logging.otel: otlp", pkg, "train")
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = (cfg.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).rstrip("/")
            span_exp = OTLPSpanExporter(endpoint=f"{base}/v1/traces") if base else OTLPSpanExporter()
            metric_exp = OTLPMetricExporter(endpoint=f"{base}/v1/metrics") if base else OTLPMetricExporter()
        else:
            span_exp, metric_exp = ConsoleSpanExporter(), ConsoleMetricExporter()
        tp = TracerProvider(resource=res)
        tp.add_span_processor(BatchSpanProcessor(span_exp))
        mp = MeterProvider(resource=res, metric_readers=[PeriodicExportingMetricReader(metric_exp, 60_000)])
        self._providers = (tp, mp)
        self.tracer, self.meter = tp.get_tracer("m3ad_rl"), mp.get_meter("m3ad_rl")
        self._gauges: dict[str, Any] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        """Nothing: the run is named in the resource; configs are not telemetry."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            name = "m3ad." + k.replace("/", ".")
            if name not in self._gauges:
                self._gauges[name] = self.meter.create_gauge(name)
            self._gauges[name].set(v, {"step": step})

    def close(self) -> None:
        for p in self._providers:
            p.shutdown()


BACKENDS: dict[str, type[Backend]] = {
    "jsonl": JsonlBackend,
    "tensorboard": TensorBoardBackend,
    "mlflow": MlflowBackend,
    "wandb": WandbBackend,
}


class Tracker:
    """One run's metric sinks: ``log(step, metrics)`` goes to each backend in ``cfg.backends``, plus JSONL."""

    def __init__(self, out: str, cfg: LoggingConfig, run_name: str, resume_step: int = 0):
        run = RunInfo(out.rstrip("/"), run_name, resume_step)
        self.cfg, self.path = cfg, f"{run.out}/metrics.jsonl"
        self.backends: list[Backend] = []
        self.otel: OtelBackend | None = None
        try:
            for name in dict.fromkeys(["jsonl", *cfg.backends]):
                self.backends.append(BACKENDS[name](run, cfg))
            if cfg.otel != "none":
                self.otel = OtelBackend(run, cfg)
                self.backends.append(self.otel)
        except BaseException:
            self.close()  # a W&B run or OTel exporter already started must not outlive the error
            raise

    def log_params(self, params: dict[str, Any]) -> None:
        """The run's config, once at the start (``cfg.model_dump(mode="json")``)."""
        for b in self.backends:
            b.log_params(params)

    @contextlib.contextmanager
    def span(self, name: str, timings: dict[str, float] | None = None, **attrs) -> Iterator[None]:
        """Time a block (into ``timings['timing/<name>_s']``) and record it as an OpenTelemetry span."""
        t0 = time.perf_counter()
        tracer = self.otel.tracer if self.otel else None
        cm = tracer.start_as_current_span(name, attributes=attrs) if tracer else contextlib.nullcontext()
        with cm:
            yield
        if timings is not None:
            timings[f"timing/{name}_s"] = time.perf_counter() - t0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        for b in self.backends:
            b.log(step, values)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def read_metrics(out: str) -> list[dict]:
    """The JSONL rows of a run, in step order."""
    with fsspec.open(f"{out.rstrip('/')}/metrics.jsonl") as fh:
        return [json.loads(ln) for ln in fh.read().decode().splitlines() if ln.strip()]
