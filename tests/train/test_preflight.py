"""RCRL refuses mistakes before Ray starts: wrong data kind, missing model, a used output, resuming a
finished or a different run. Each case is a few milliseconds, not a minute of start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m3ad_rl.cli import main
from m3ad_rl.core.errors import UsageError
from m3ad_rl.train import checkpoint as ck
from m3ad_rl.train.rcrl import RCRLConfig, RCRLTrainer


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    rl = tmp_path / "rl.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "images": ["i"], "reward_model": ["r"], "extra_info": ["e"]}), rl)
    sft = tmp_path / "sft.parquet"
    pq.write_table(pa.table({"id": ["a"], "messages": ["m"], "images": ["i"]}), sft)
    return {"model": model, "rl": rl, "sft": sft, "out": tmp_path / "run"}


def cfg(files, **kw) -> RCRLConfig:
    base = {"model": str(files["model"]), "data": str(files["rl"]), "out": str(files["out"]), "steps": 4}
    return RCRLConfig(**{**base, **kw})


def refused(trainer: RCRLTrainer) -> str:
    import ray

    with pytest.raises(UsageError) as e:
        trainer.preflight()
    assert not ray.is_initialized()
    return str(e.value)


def test_wrong_data_kind_and_missing_model(files):
    assert "is not an RL set" in refused(RCRLTrainer(cfg(files, data=str(files["sft"]))))
    assert "it looks like an SFT set" in refused(RCRLTrainer(cfg(files, data=str(files["sft"]))))
    assert "no such file" in refused(RCRLTrainer(cfg(files, data=str(files["out"] / "nope.parquet"))))
    assert "no such model folder" in refused(RCRLTrainer(cfg(files, model=str(files["model"] / "nope"))))
    assert "not a model" in refused(RCRLTrainer(cfg(files, model=str(files["out"].parent))))


def _finished_checkpoint(files, step: int, settings: dict) -> None:
    url = ck.step_dir(str(files["out"] / "checkpoints"), step)
    Path(url).mkdir(parents=True)
    text = json.dumps({"step": step, "settings": settings})
    Path(url, "trainer_state.json").write_text(text)
    ck.mark_complete(url, {"step": step}, {"trainer_state.json": len(text)})


def test_a_used_output_needs_resume_or_overwrite(files):
    c = cfg(files)
    _finished_checkpoint(files, 2, RCRLTrainer(c).run_settings())
    (files["out"] / "metrics.jsonl").write_text('{"step": 1}\n')
    msg = refused(RCRLTrainer(c))
    assert "already holds an RCRL run" in msg and "--resume" in msg and "--overwrite" in msg
    RCRLTrainer(c, overwrite=True).preflight()  # clears the old run
    assert not (files["out"] / "checkpoints").exists() and not (files["out"] / "metrics.jsonl").exists()


def test_resume_refuses_a_finished_or_different_run(files):
    c = cfg(files)
    _finished_checkpoint(files, 2, RCRLTrainer(c).run_settings())
    t = RCRLTrainer(c, resume=True)
    t.preflight()  # the same run, at step 2 of 4: fine
    assert t._resume_from.endswith("step_000002")
    assert "is another run's checkpoint (seed: 0 in the checkpoint, 7 now" in refused(
        RCRLTrainer(cfg(files, seed=7), resume=True)
    )
    RCRLTrainer(cfg(files, seed=7), resume=True, force=True).preflight()  # accepted, with a warning
    assert "the run is finished (checkpoint at step 2 of steps=2)" in refused(
        RCRLTrainer(cfg(files, steps=2), resume=True)
    )


def test_cli_says_one_line_and_exits_2(files, capsys):
    rc = main(["train", "rcrl", "--set", f"model={files['model']}", f"data={files['sft']}", f"out={files['out']}",
               "steps=2"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("m3ad-rl: data=") and "SFT set" in err[0]


def test_a_corrupt_image_is_named_before_training(files, tmp_path):
    """SFT died at step ~5 on damaged image bytes without naming the sample; now both stages refuse up front."""
    import io

    from PIL import Image

    from m3ad_rl.core.errors import DataError
    from m3ad_rl.train.rcrl import PromptSet
    from m3ad_rl.train.sft import SFTConfig
    from m3ad_rl.train.sft import run as run_sft

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    good, bad = buf.getvalue(), buf.getvalue()[:20]  # a truncated PNG
    rl = tmp_path / "bad-rl.parquet"
    pq.write_table(pa.table({
        "prompt": [[{"role": "user", "content": "<image>q"}]] * 2,
        "images": [[{"bytes": good}], [{"bytes": bad}]],
        "reward_model": [{"ground_truth": "{}"}] * 2,
        "extra_info": [{"id": "ok-1"}, {"id": "broken-7"}],
    }), rl)  # fmt: skip
    with pytest.raises(DataError, match=r"sample .broken-7. does not decode"):
        PromptSet(str(rl), seed=0)
    sft = tmp_path / "bad-sft.parquet"
    pq.write_table(pa.table({"id": ["ok-1", "broken-7"], "messages": ["[]", "[]"],
                             "images": [[{"bytes": good}], [{"bytes": bad}]]}), sft)  # fmt: skip
    with pytest.raises(DataError, match=r"sample .broken-7. does not decode"):
        run_sft(SFTConfig(model=str(files["model"]), data=str(sft), out=str(tmp_path / "sft-out")))


def test_setup_failure_surfaces_its_own_error_not_cleanups(files):
    """A failed setup used to be hidden behind `AttributeError: ... 'reward_handle'` from cleanup."""
    from m3ad_rl.train.rcrl import run

    with pytest.raises(UsageError, match="no such model folder"):
        run(cfg(files, model=str(files["model"] / "missing")))


def test_sft_hands_workers_absolute_paths(files, tmp_path, monkeypatch):
    """Relative paths, as the README shows them, failed inside Ray Train workers (another working folder)."""
    import ray.train.torch

    from m3ad_rl.train import ray_setup, sft

    seen = {}

    class Recorder:
        def __init__(self, loop, train_loop_config, **kw):
            seen.update(train_loop_config)

        def fit(self):
            return None

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Recorder)
    monkeypatch.setattr(ray_setup, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(sft, "read_metrics", lambda out: [])
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(4)], "messages": ["[]"] * 4,
                             "images": [[{"bytes": _png()}]] * 4}), tmp_path / "sft-rel.parquet")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    sft.run(sft.SFTConfig(model="model", data="sft-rel.parquet", out="runs/sft"))
    assert seen["model"] == str(files["model"]) and seen["data"] == str(tmp_path / "sft-rel.parquet")
    assert seen["out"] == str(tmp_path / "runs" / "sft")


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()
