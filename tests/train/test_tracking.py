"""Each tracking backend, offline: log a few steps, then read them back with that tool's own reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from m3ad_rl.core.config import ConfigError, load_config
from m3ad_rl.core.errors import UsageError
from m3ad_rl.train.tracking import LoggingConfig, Tracker, read_metrics

STEPS = {1: {"sft/loss": 2.0, "timing/step_s": 0.5}, 2: {"sft/loss": 1.5}, 3: {"sft/loss": 0.25}}
PARAMS = {"model": "tiny", "optim": {"lr": 1e-3, "schedule": "cosine"}}


def _run(out: Path, resume_step: int = 0, steps: dict | None = None, **cfg) -> Tracker:
    tracker = Tracker(str(out), LoggingConfig(**cfg), "test-run", resume_step=resume_step)
    tracker.log_params(PARAMS)
    for step, metrics in (STEPS if steps is None else steps).items():
        tracker.log(step, metrics)
    tracker.close()
    return tracker


def _backend(tracker: Tracker):
    """The one backend a test chose (JSONL is always first)."""
    return tracker.backends[-1]


def _loss_by_step(pairs) -> dict[int, float]:
    return {int(s): float(v) for s, v in pairs}


WANT_LOSS = {s: m["sft/loss"] for s, m in STEPS.items()}


def test_jsonl_rows_and_resume_drops_the_redone_steps(tmp_path):
    _run(tmp_path, backends=["jsonl"])
    assert read_metrics(str(tmp_path)) == [{"step": s, **dict(sorted(m.items()))} for s, m in STEPS.items()]
    _run(tmp_path, resume_step=1, steps={2: {"sft/loss": 9.0}}, backends=["jsonl"])
    assert [(r["step"], r["sft/loss"]) for r in read_metrics(str(tmp_path))] == [(1, 2.0), (2, 9.0)]


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, backends=["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert _loss_by_step((e.step, e.value) for e in acc.Scalars("sft/loss")) == WANT_LOSS
    assert [e.step for e in acc.Scalars("timing/step_s")] == [1]


def test_tensorboard_on_object_storage_reads_back_and_resumes(s3_bucket, tmp_path):
    """Issue 21: with out on s3:// the events used to go nowhere; now each step's events land under
    {out}/tensorboard, and a resumed run's purge marker hides the steps it redoes."""
    import fsspec
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = f"{s3_bucket}/tb-run"
    tracker = Tracker(out, LoggingConfig(backends=["tensorboard"]), "s3-run")
    tracker.log(1, STEPS[1])
    fs = fsspec.filesystem("s3")
    assert [p for p in fs.ls(f"{out}/tensorboard") if "tfevents" in p], "nothing published after a step"
    for step in (2, 3):
        tracker.log(step, STEPS[step])
    tracker.close()
    _run_url = Tracker(out, LoggingConfig(backends=["tensorboard"]), "s3-run", resume_step=1)
    _run_url.log(2, {"sft/loss": 9.0})
    _run_url.close()
    fs.get(f"{out}/tensorboard/", str(tmp_path / "tb"), recursive=True)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert _loss_by_step((e.step, e.value) for e in acc.Scalars("sft/loss")) == {1: 2.0, 2: 9.0}


def test_mlflow_file_store_history_params_and_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    tracker = _run(tmp_path, backends=["mlflow"])
    mlf = _backend(tracker)
    assert mlf.tracking_uri == f"file:{tmp_path / 'mlruns'}"
    client = MlflowClient(mlf.tracking_uri)
    history = client.get_metric_history(mlf.run_id, "sft/loss")
    assert _loss_by_step((m.step, m.value) for m in history) == WANT_LOSS
    run = client.get_run(mlf.run_id)
    assert run.data.params["optim.lr"] == "0.001" and run.info.status == "FINISHED"
    assert run.info.run_name == "test-run"
    # a resumed job continues the same run; a fresh one in the same folder starts another
    resumed = _backend(_run(tmp_path, resume_step=3, steps={4: {"sft/loss": 0.1}}, backends=["mlflow"]))
    assert resumed.run_id == mlf.run_id
    assert [m.step for m in client.get_metric_history(mlf.run_id, "sft/loss")] == [1, 2, 3, 4]
    assert _backend(_run(tmp_path, backends=["mlflow"])).run_id != mlf.run_id


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of a W&B transaction log (``run-<id>.wandb``): W&B 0.31 ships no reader, the
    format is LevelDB's log (32 KiB blocks of [crc32 u32, length u16, type u8] + data) after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + n > len(data):  # the end, or a record still being written
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def test_wandb_offline_run_files_hold_history_and_config(tmp_path):
    tracker = _run(tmp_path, backends=["wandb"])
    run_id = _backend(tracker).run.id
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    records, deadline = _wandb_records(run_dir / f"run-{run_id}.wandb"), time.monotonic() + 30
    # finish() can return before wandb-core's writer has the last records on disk (seen once here)
    while not any(r.HasField("exit") for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = _wandb_records(run_dir / f"run-{run_id}.wandb")
    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    assert {h["_step"]: h["sft/loss"] for h in history} == WANT_LOSS
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    config |= {u.key: json.loads(u.value_json) for r in records if r.HasField("run") for u in r.run.config.update}
    assert config["optim"]["lr"] == 1e-3
    # a resumed job continues the same run id (wandb sync merges the two offline folders)
    assert _backend(_run(tmp_path, resume_step=3, steps={4: {"sft/loss": 0.1}}, backends=["wandb"])).run.id == run_id


def test_backend_names_are_checked_and_the_old_tensorboard_switch_still_works():
    class Cfg(BaseModel):
        logging: LoggingConfig = LoggingConfig()

    with pytest.raises(ConfigError, match=r"logging\.backends.*'jsonl', 'tensorboard', 'mlflow' or 'wandb'"):
        load_config(Cfg, None, ["logging.backends=[jsonl,neptune]"])
    assert load_config(Cfg, None, ["logging.tensorboard=false"]).logging.backends == ["jsonl"]
    assert load_config(Cfg, None, ["logging.backends=[mlflow]", "logging.tensorboard=true"]).logging.backends == [
        "mlflow",
        "tensorboard",
    ]


def test_a_missing_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(UsageError, match="pip install mlflow-skinny"):
        Tracker(str(tmp_path), LoggingConfig(backends=["mlflow"]), "x")


@pytest.mark.parametrize(("backend", "key"), [("mlflow", "mlflow_tracking_uri"), ("wandb", "wandb_dir")])
def test_a_storage_url_out_asks_for_a_local_place(backend, key):
    with pytest.raises(UsageError, match=f"logging.{key}"):
        Tracker("memory://runs/r1", LoggingConfig(backends=[backend]), "x")


NETWORK_PROBE = """
import sys
def hook(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and isinstance(args[1], tuple)):
        print("NETWORK", event, args[1] if event == "socket.connect" else args[0], file=sys.stderr, flush=True)
sys.addaudithook(hook)
from m3ad_rl.train.tracking import LoggingConfig, Tracker
tracker = Tracker(sys.argv[1], LoggingConfig(backends=["mlflow", "wandb"]), "offline")
tracker.log_params({"a": 1})
tracker.log(1, {"x": 1.0})
tracker.close()
"""


def test_mlflow_and_wandb_never_touch_the_network(tmp_path):
    """Both ship usage telemetry (MLflow's, W&B's analytics) that posts from a background thread, also at exit;
    a whole process (without pytest's and CI's variables, which turn MLflow's off) must not look up a host."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI")}
    res = subprocess.run([sys.executable, "-c", NETWORK_PROBE, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "NETWORK" not in res.stderr, res.stderr[-2000:]


def test_otlp_exports_metrics_and_spans_to_the_configured_endpoint(tmp_path):
    """Issue 21: ``logging.otlp_endpoint`` is where telemetry goes. A collector on 127.0.0.1 speaking
    OTLP/HTTP (protobuf) receives the step metrics as gauges and the phase spans, with the run named."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    got: dict[str, list[bytes]] = {}

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # (http.server's name for it)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/x-protobuf"
            got.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracker = Tracker(str(tmp_path), LoggingConfig(backends=["jsonl"], otel="otlp",
                          otlp_endpoint=f"http://127.0.0.1:{server.server_port}/"), "otlp-run")  # fmt: skip
        with tracker.span("rollout", {}, step=1):
            tracker.log(1, {"rcrl/reward": 0.5})
        tracker.close()  # flushes both exporters
    finally:
        server.shutdown()
    assert set(got) == {"/v1/metrics", "/v1/traces"}, got.keys()
    metrics = ExportMetricsServiceRequest.FromString(got["/v1/metrics"][-1])
    names = {m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "m3ad.rcrl.reward" in names
    attrs = {a.key: a.value.string_value for a in metrics.resource_metrics[0].resource.attributes}
    assert attrs["m3ad.run"] == "otlp-run" and attrs["service.name"] == "m3ad-rl"
    traces = ExportTraceServiceRequest.FromString(got["/v1/traces"][-1])
    assert [s.name for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans] == ["rollout"]
