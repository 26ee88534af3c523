"""The command line as other tools call it: exact formats, bad lines skipped with their number."""

import json
import subprocess
import sys

import pytest

from m3ad_rl.cli import EXIT_SKIPPED, EXIT_USAGE, main
from m3ad_rl.data.simulated_responses import make_records
from tests.helpers import out

GT = {"label": "anomalous", "defects": [{"type": "bent", "box": [0.1, 0.1, 0.3, 0.3]}]}
OUT_KEYS = {"id", "score", "consistency", "answer", "type", "location", "reflection", "reflection_outcome"}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_reward_score_as_a_subprocess(tmp_path):
    good = json.dumps(
        {"id": "a", "response": out("yes", types=["bent"], boxes=[[0.1, 0.1, 0.3, 0.3]]), "ground_truth": GT}
    )
    src = _write(tmp_path / "in.jsonl", [good])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "m3ad_rl.cli",
            "reward",
            "score",
            "--input",
            src,
            "--output",
            str(tmp_path / "o.jsonl"),
            "--config",
            "configs/rewards/preset_b.yaml",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert set(row) == OUT_KEYS
    assert row == {
        "id": "a",
        "score": 4.0,
        "consistency": 1.0,
        "answer": 1.0,
        "type": 1.0,
        "location": 1.0,
        "reflection": 0.0,
        "reflection_outcome": "none",
    }


def test_bad_lines_are_reported_with_their_number_and_skipped(tmp_path, capsys):
    ok = {"id": "ok", "response": "<think>t</think><answer>no</answer>", "ground_truth": GT}
    lines = [
        json.dumps(ok),
        "{not json",
        json.dumps({"id": "x", "ground_truth": GT}),  # no response
        json.dumps({"id": "y", "response": "r", "ground_truth": {"label": "?"}}),
        json.dumps([1, 2]),
        "",
        json.dumps(dict(ok, id="ok2", response="<<<garbage")),  # malformed output: scored, not lost
    ]
    src = _write(tmp_path / "in.jsonl", lines)
    rc = main(["reward", "score", "--input", src, "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == EXIT_SKIPPED
    assert f"{src}:2: skipped: not valid JSON" in err
    assert f"{src}:3: skipped: missing field 'response'" in err
    assert f"{src}:4: skipped: ground_truth.label must be one of" in err
    assert f"{src}:5: skipped: expected a JSON object" in err
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["ok", "ok2"]
    assert rows[1]["score"] == 0.0


def test_bad_config_exits_2_and_names_the_key(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [])
    rc = main(
        ["reward", "score", "--input", src, "--output", str(tmp_path / "o.jsonl"), "--set", "reflection.preset=z"]
    )
    assert rc == EXIT_USAGE
    assert "reflection.preset" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_score_report_format(tmp_path, capsys):
    records = make_records(200, seed=5)
    lines = [json.dumps(r) for r in records] + ['{"id": "z", "scene": "texture"}']
    src = _write(tmp_path / "preds.jsonl", lines)
    rc = main(
        [
            "eval",
            "score",
            "--input",
            src,
            "--output",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
            "--set",
            "exclude_sources=[real-iad]",
        ]
    )
    assert rc == EXIT_SKIPPED
    rep = json.loads((tmp_path / "r.json").read_text())
    assert {"scenes", "average", "loc_f1_by_iou", "reflection"} <= set(rep)
    n_kept = sum(1 for r in records if r["source"] != "real-iad")
    assert sum(s["n"] for s in rep["scenes"].values()) == n_kept
    for s in rep["scenes"].values():
        assert set(s) == {"n", "accuracy", "balanced_accuracy", "type_f1", "loc_f1"}
    assert set(rep["average"]) == {"accuracy", "balanced_accuracy", "type_f1", "loc_f1"}
    assert set(rep["loc_f1_by_iou"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    assert rep["skipped_lines"] == [201]
    stdout = capsys.readouterr().out
    assert "Texture" in stdout and "Average" in stdout and "Acc" in stdout
    assert "| Type |" in (tmp_path / "r.md").read_text()


def test_taxonomy_lookup(capsys):
    assert main(["taxonomy", "--lookup", "rust", "zzz"]) == 0
    text = capsys.readouterr().out
    assert "'rust' -> rusty (type; surface anomaly / material anomaly)" in text and "'zzz' -> none" in text


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    """The Quickstart's main job (--quick): data, tiny model, FT sets, SFT, RCRL, evaluation, report."""
    pytest.importorskip("deepspeed")
    import ray

    ray.shutdown()
    try:
        assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    finally:
        ray.shutdown()
    rep = json.loads((tmp_path / "report.json").read_text())
    assert list(rep["eval"]) == ["base", "raws-sft", "rcrl"]
    assert all(r["scenes"] for r in rep["eval"].values())  # every model was scored on benchmark scenes
    assert [h["step"] for h in rep["rcrl"]] == [1, 2, 3, 4]
    assert set(rep["times"]) == {"data", "model", "ft", "sft", "rcrl", "eval"}
    for f in ("sft/model/model.safetensors", "rcrl/model/model.safetensors", "rcrl/checkpoints/step_000004/COMPLETE"):
        assert (tmp_path / f).exists(), f
    assert (tmp_path / "training_curves.png").stat().st_size > 20_000
    text = (tmp_path / "report.md").read_text()
    assert "| rcrl |" in text and "Reflection" in text
    page = (tmp_path / "gallery.html").read_text()  # the three models side by side (issue 24)
    assert all(f'data-model="{m}"' in page for m in ("base", "raws-sft", "rcrl")) and "![cases](gallery.png)" in text
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv", [["reward"], ["eval", "score"], []])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
