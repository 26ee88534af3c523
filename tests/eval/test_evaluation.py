"""`eval run` as a new user runs it: tiny model, small synthetic benchmark, 2 Ray workers; resume."""

import dataclasses
import json

import pytest

ray = pytest.importorskip("ray")

from m3ad_rl.cli import main  # noqa: E402
from m3ad_rl.data.store import write_dataset  # noqa: E402
from m3ad_rl.data.synthetic import SynthConfig, generate  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model, s3_bucket):
    """Ray starts after the S3 API's credentials are in the environment: its workers inherit them."""
    root = tmp_path_factory.mktemp("eval")
    (root / "tiny").symlink_to(tiny_model)
    samples = generate(SynthConfig(n=16, seed=9, size=128))
    samples = [dataclasses.replace(s, source="other") if i % 4 == 0 else s for i, s in enumerate(samples)]
    write_dataset(str(root / "bench"), samples)
    (root / "s3").write_text(s3_bucket)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield root
    ray.shutdown()


def test_eval_run_two_workers_then_resume(setup, capsys):
    out = setup / "run"
    argv = [
        "eval",
        "run",
        "--model",
        str(setup / "tiny"),
        "--engine",
        "hf",
        "--dataset",
        str(setup / "bench"),
        "--out",
        str(out),
        "--workers",
        "2",
        "--set",
        "sampling.max_new_tokens=24",
        "batch_size=4",
    ]
    assert main(argv) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert set(rows[0]) == {"id", "scene", "source", "response", "ground_truth", "truncated"}
    report = json.loads((out / "report.json").read_text())
    assert sum(s["n"] for s in report["scenes"].values()) == 16
    assert "chance" in report["verdict"] and "chance" in (out / "report.md").read_text()
    assert (out / "reflection.png").stat().st_size > 5000 and (out / "iou_sweep.png").stat().st_size > 5000
    page = (out / "gallery.html").read_text()  # the cases to look at, beside every report (issue 24)
    assert page.count('class="case"') >= 4 and "data:image/jpeg;base64," in page and "tiny" in page
    assert (out / "gallery.png").stat().st_size > 5000
    assert "chance" in capsys.readouterr().out

    # a run killed mid-way: 10 finished lines and one cut short; the rerun does only what is missing
    (out / "predictions.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:25])
    assert main(argv) == 0
    again = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()[:10]]
    final = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]  # every line whole
    assert len(final) == 16 and {r["id"] for r in final} == {r["id"] for r in rows} and again == rows[:10]
    assert "resuming: 10 predictions" in capsys.readouterr().err


def test_baseline_sweep_table(setup, tmp_path):
    from m3ad_rl.eval.compare import SweepConfig, comparison_table, run_sweep

    cfg = SweepConfig(
        dataset=str(setup / "bench"),
        out=str(tmp_path / "sweep"),
        limit=4,
        sampling={"n": 1, "temperature": 0.0, "max_new_tokens": 8, "logprobs": False},
        models=[
            {"name": "tiny-a", "model": str(setup / "tiny")},
            {"name": "tiny-b", "model": str(setup / "tiny"), "exclude_sources": ["other"]},
        ],
    )
    table = run_sweep(cfg)
    lines = table.splitlines()
    assert lines[0].startswith("| Model |") and "Average Acc" in lines[0] and "Type F1" in lines[0]
    assert lines[2].startswith("| tiny-a |") and lines[3].startswith("| tiny-b |")
    assert (tmp_path / "sweep" / "comparison.md").read_text().strip() == table
    assert len((tmp_path / "sweep" / "tiny-a" / "predictions.jsonl").read_text().splitlines()) == 4
    fake = {
        "m": {
            "scenes": {"texture": {"accuracy": 0.5, "balanced_accuracy": 0.25}},
            "average": {"accuracy": 0.5, "balanced_accuracy": 0.25, "type_f1": 0.1, "loc_f1": 0.2},
        }
    }
    assert comparison_table(fake).splitlines()[2] == "| m | 50.0 | 25.0 | 50.0 | 25.0 | 0.100 | 0.200 |"


def test_eval_run_refuses_another_models_predictions(setup, tiny_model, capsys, tmp_path):
    """An --out holding another model's predictions is not "resumed": the run names the difference."""
    import shutil

    out = tmp_path / "run"
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    (other / "generation_config.json").write_text('{"max_length": 7}')  # different files: a different model
    argv = ["eval", "run", "--engine", "hf", "--dataset", str(setup / "bench"), "--out", str(out), "--set",
            "sampling.max_new_tokens=8", "limit=4"]  # fmt: skip
    assert main([*argv, "--model", str(setup / "tiny")]) == 0
    capsys.readouterr()
    assert main([*argv, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds predictions made by another run" in err and "model:" in err and "--overwrite" in err
    assert main([*argv, "--model", str(other), "--overwrite"]) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str(other)


def test_eval_run_writes_to_a_storage_url_and_resumes_there(setup, capsys):
    """--out on object storage (an S3 API): predictions, run.json and the report land there."""
    import fsspec

    url = f"{(setup / 's3').read_text()}/runs/eval"
    argv = ["eval", "run", "--model", str(setup / "tiny"), "--engine", "hf", "--dataset", str(setup / "bench"),
            "--out", url, "--set", "sampling.max_new_tokens=8", "limit=4"]  # fmt: skip
    assert main(argv) == 0
    fs = fsspec.filesystem("s3")
    names = {p.rsplit("/", 1)[-1] for p in fs.find(url)}
    assert {"predictions.jsonl", "run.json", "report.json", "report.md"} <= names
    capsys.readouterr()
    assert main(argv) == 0  # same run again: nothing left to predict
    assert len(fs.cat(f"{url}/predictions.jsonl").splitlines()) == 4
