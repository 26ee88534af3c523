"""`m3ad-rl data ...` as a new user runs it: synth -> stats -> gallery -> split -> build-ft."""

import json
import subprocess
import sys

import pyarrow.parquet as pq

from m3ad_rl.cli import EXIT_SKIPPED, main
from m3ad_rl.data.store import iter_samples, read_manifest


def test_data_pipeline(tmp_path, capsys):
    ds = str(tmp_path / "synth")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "m3ad_rl.cli",
            "data",
            "synth",
            "--out",
            ds,
            "--n",
            "160",
            "--seed",
            "0",
            "--workers",
            "2",
            "--set",
            "size=96",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert read_manifest(ds)["rows"] == 160

    assert main(["data", "stats", "--input", ds, "--plot", str(tmp_path / "stats.png")]) == 0
    out = capsys.readouterr().out
    assert "160 samples" in out and "per category" in out and "texture" in out
    assert (tmp_path / "stats.png").stat().st_size > 10_000
    assert (
        main(["data", "gallery", "--input", ds, "--out", str(tmp_path / "g.png"), "--n", "8", "--anomalous-only"]) == 0
    )
    assert (tmp_path / "g.png").stat().st_size > 10_000

    split = str(tmp_path / "split")
    assert main(["data", "split", "--input", ds, "--out", split, "--set", "seed=3"]) == 0
    ft_cats = {(s.scene, s.category) for s in iter_samples(f"{split}/ft", with_images=False)}
    bench_cats = {(s.scene, s.category) for s in iter_samples(f"{split}/bench", with_images=False)}
    assert ft_cats and bench_cats and not ft_cats & bench_cats
    assert {s for s, _ in ft_cats} == {s for s, _ in bench_cats} == {"texture", "workpiece", "electronic", "logical"}

    ft_ids = [s.id for s in iter_samples(f"{split}/ft", with_images=False)]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "answer": "yes"}) + "\n" for i in ft_ids[:-1]))
    built = str(tmp_path / "ft")
    rc = main(["data", "build-ft", "--input", f"{split}/ft", "--predictions", str(preds), "--out", built])
    assert rc == EXIT_SKIPPED  # the last sample had no prediction
    assert f"skipped {ft_ids[-1]}" in capsys.readouterr().err
    rows = list(iter_samples(f"{built}/samples", with_images=False))
    assert len(rows) == len(ft_ids) - 1 and all(r.target and r.mode and r.difficulty for r in rows)
    assert pq.read_metadata(f"{built}/rl.parquet").num_rows == len(rows)
    assert pq.read_metadata(f"{built}/sft.parquet").num_rows == len(rows)
