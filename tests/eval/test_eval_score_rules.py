"""`eval score` and `evaluate` on messy input (docs/spec-readings.md §4): scene names in any case
are one scene, unknown scenes and conflicting repeats are errors naming them, exact repeats count once."""

import json

import pytest

from m3ad_rl.cli import main
from m3ad_rl.core.errors import EXIT_DATA, EXIT_SKIPPED, EXIT_USAGE, DataError
from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.eval.metrics import EvalConfig, Prediction, evaluate
from tests.helpers import out

A = {"label": "anomalous", "defects": [{"type": "scratch", "box": [0.0, 0.0, 0.5, 0.5]}]}
N = {"label": "normal", "defects": []}


def _line(i, scene, answer="no", gt=N) -> dict:
    kw = {"types": ["scratch"], "boxes": [[0.0, 0.0, 0.5, 0.5]]} if answer == "yes" else {}
    return {"id": str(i), "scene": scene, "response": out(answer, **kw), "ground_truth": gt}


def _score(tmp_path, rows, *extra):
    src = tmp_path / "preds.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["eval", "score", "--input", str(src), "--output", str(tmp_path / "r.json"), *extra])
    report = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None
    return rc, report


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("m3ad-rl:")][-1]


def test_scene_names_in_any_case_are_one_scene(tmp_path, capsys):
    rows = [_line(0, "texture"), _line(1, "Texture", "yes"), _line(2, " TEXTURE "), _line(3, "Workpiece", gt=A)]
    rc, rep = _score(tmp_path, rows, "--markdown", str(tmp_path / "r.md"))
    assert rc == 0
    assert list(rep["scenes"]) == ["texture", "workpiece"] and rep["scenes"]["texture"]["n"] == 3
    assert rep["average"]["accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    header = (tmp_path / "r.md").read_text().split("\n")[2]
    assert header.count("Texture") == 1  # printed once, not once per spelling
    capsys.readouterr()


def test_an_unknown_scene_is_an_error_listing_the_scenes(tmp_path, capsys):
    rc, rep = _score(tmp_path, [_line(0, "texture"), _line(1, "texure"), _line(2, "texure")])
    assert rc == EXIT_DATA and rep is None  # nothing written, not in the Average
    line = _error_line(capsys)
    assert "unknown scene(s) 'texure' (line 2, 3)" in line
    assert "the scenes are texture, workpiece, electronic, logical" in line


def test_an_exact_repeat_counts_once_and_is_reported(tmp_path, capsys):
    rows = [_line(0, "texture"), _line(1, "texture", "yes"), _line(0, "texture")]
    rc, rep = _score(tmp_path, rows)
    assert rc == EXIT_SKIPPED and rep["scenes"]["texture"]["n"] == 2 and rep["skipped_lines"] == [3]
    assert "preds.jsonl:3: skipped: repeats line 1 (id '0'); counted once" in capsys.readouterr().err


def test_a_conflicting_repeat_is_an_error_naming_the_lines(tmp_path, capsys):
    rows = [_line(0, "texture"), _line(1, "texture"), _line(0, "texture", "yes")]
    rc, rep = _score(tmp_path, rows)
    assert rc == EXIT_DATA and rep is None
    assert "ids repeated with different content: '0' (lines 1 and 3)" in _error_line(capsys)


def test_scenes_option_is_checked_and_case_insensitive(tmp_path, capsys):
    rows = [_line(0, "texture"), _line(1, "workpiece", gt=A)]
    rc, rep = _score(tmp_path, rows, "--set", "scenes=[Workpiece]")
    assert rc == 0 and list(rep["scenes"]) == ["workpiece"]
    rc, _ = _score(tmp_path, rows, "--set", "scenes=[texure]")
    assert rc == EXIT_USAGE and "scenes" in _error_line(capsys)


def test_evaluate_refuses_repeats_and_unknown_scenes():
    gt = GroundTruth.from_obj(N)
    assert evaluate([Prediction("a", "Texture", out("no"), gt)])["scenes"]["texture"]["n"] == 1
    with pytest.raises(DataError, match="ids scored more than once: 'a'"):
        evaluate([Prediction("a", "texture", out("no"), gt), Prediction("a", "texture", out("no"), gt)])
    with pytest.raises(DataError, match="unknown scene"):
        evaluate([Prediction("a", "marble", out("no"), gt)])
    assert EvalConfig(scenes=("Texture", "texture")).scenes == ("texture",)
